"""The ``mail:`` and ``realserver:`` sections: what ``lvsmail realserver join`` sets up on a real server.

``mail:`` is the mail stack every real server runs identically (same greeting name,
same destinations, mailboxes on the same shared storage), so it is written once in
the cluster file rather than once per machine. ``realserver:`` holds the few network
facts a real server cannot work out from the services: the directors' inside address
for NAT and the directors' own addresses on the real servers' LAN.
"""

from __future__ import annotations

import ipaddress
import pwd
import re

from lvsmail.config.fields import Reader
from lvsmail.config.keys import names
from lvsmail.config.tree import Node
from lvsmail.spec import (
    IMAP_SERVERS,
    MAILBOX_LAYOUTS,
    STORAGE_TYPES,
    HealthPageSpec,
    MailboxSpec,
    MailSpec,
    RealServerDefaultsSpec,
    StorageSpec,
    TlsFilesSpec,
)

MAIL_KEYS = names("mail")
MAILBOX_KEYS = names("mail.mailbox")
STORAGE_KEYS = names("mail.storage")
TLS_KEYS = names("mail.tls")
HEALTH_KEYS = names("mail.health_page")
REALSERVER_KEYS = names("realserver")

#: A DNS host name (RFC 1123 labels); Postfix's myhostname must be fully qualified to be useful.
HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                         r"[A-Za-z0-9])?)*\Z")
#: Postfix destinations: a domain, ``$myhostname``-style parameter references, or a lookup table.
DESTINATION_RE = re.compile(r"(\$[a-z_]+|[a-z0-9]+:[^\s,]+|[A-Za-z0-9.-]+)\Z")
#: Postfix lookup table ``type:name`` (texthash:/etc/postfix/vmailbox, hash:..., ldap:...).
TABLE_RE = re.compile(r"[a-z0-9]+:\S+\Z")
#: Interface names as the kernel accepts them (IFNAMSIZ 16 including the NUL).
IFNAME_RE = re.compile(r"[^\s/:]{1,15}\Z")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")


# -- mail ------------------------------------------------------------------------

def read_mail(r: Reader, node: Node) -> MailSpec | None:
    """Validate ``mail:``; every problem is recorded on ``r``."""
    e = r.mapping(node, "mail", MAIL_KEYS, required=("hostname", "domain"))
    if e is None:
        return None
    before = len(r.problems)
    hostname = _hostname(r, e["hostname"], "mail.hostname") if "hostname" in e else None
    domain = _hostname(r, e["domain"], "mail.domain") if "domain" in e else None
    values: dict = {}
    if "destinations" in e:
        values["destinations"] = _strings(r, e["destinations"], "mail.destinations", DESTINATION_RE,
                                          "a domain, a $parameter or a type:table")
    if "mynetworks" in e:
        values["mynetworks"] = _networks(r, e["mynetworks"], "mail.mynetworks")
    storage = _storage(r, e["storage"]) if "storage" in e else None
    mailbox = _mailbox(r, e["mailbox"]) if "mailbox" in e else MailboxSpec()
    if "imap" in e:
        values["imap"] = r.choice(e["imap"], "mail.imap", IMAP_SERVERS, "supported IMAP server")
    if "max_daemons" in e:
        values["max_daemons"] = r.integer(e["max_daemons"], "mail.max_daemons", 1, 100000)
    if "tls" in e:
        values["tls"] = _tls(r, e["tls"])
    if "health_page" in e:
        values["health_page"] = _health_page(r, e["health_page"])
    if mailbox is not None and storage is not None and mailbox.root is not None:
        if not _inside(mailbox.root, storage.path):
            r.error(e["mailbox"], "mail.mailbox.root",
                    f"{mailbox.root} is not on the shared storage {storage.path}; every real server must see "
                    "the same mailboxes")
    if mailbox is not None and mailbox.layout == "virtual" and values.get("imap") == "courier":
        r.error(e["mailbox"], "mail.mailbox.layout",
                "courier finds each Maildir through the user's home (authlib), so it needs layout: home; "
                "use imap: dovecot for virtual mailboxes")
    if len(r.problems) > before or hostname is None or domain is None or mailbox is None:
        return None
    return MailSpec(hostname=hostname, domain=domain, mailbox=mailbox, storage=storage, **values)


def dump_mail(spec: MailSpec) -> dict:
    """``mail:`` as an administrator would write it (defaults left out)."""
    default = MailSpec(hostname=spec.hostname, domain=spec.domain)
    out: dict = {"hostname": spec.hostname, "domain": spec.domain}
    if spec.destinations != default.destinations:
        out["destinations"] = list(spec.destinations)
    if spec.mynetworks:
        out["mynetworks"] = list(spec.mynetworks)
    if spec.mailbox != MailboxSpec():
        box = {"layout": spec.mailbox.layout}
        for key in ("root", "maps"):
            if getattr(spec.mailbox, key) is not None:
                box[key] = getattr(spec.mailbox, key)
        if spec.mailbox.layout == "virtual" and spec.mailbox.owner != MailboxSpec().owner:
            box["owner"] = spec.mailbox.owner
        out["mailbox"] = box
    if spec.storage is not None:
        st = {"path": spec.storage.path, "type": spec.storage.type}
        if spec.storage.require_network:
            st["require_network"] = True
        out["storage"] = st
    if spec.imap != default.imap:
        out["imap"] = spec.imap
    if spec.max_daemons != default.max_daemons:
        out["max_daemons"] = spec.max_daemons
    if spec.tls is not None:
        out["tls"] = {"cert": spec.tls.cert, "key": spec.tls.key}
    if spec.health_page is not None:
        out["health_page"] = {"path": spec.health_page.path, "text": spec.health_page.text}
    return out


def _hostname(r: Reader, node: Node, path: str) -> str | None:
    """A fully qualified host or domain name (lower-cased: DNS names are case-insensitive)."""
    text = r.string(node, path)
    if text is None:
        return None
    if not HOSTNAME_RE.match(text) or "." not in text:
        r.error(node, path, f"{text!r} is not a fully qualified domain name like mail.example.org")
        return None
    return text.lower()


def _strings(r: Reader, node: Node, path: str, pattern: re.Pattern, what: str) -> tuple[str, ...] | None:
    """A list of strings (or one string) each matching ``pattern``."""
    items = r.sequence(node, path) if isinstance(node.value, list) else [node]
    if items is None:
        return None
    out = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(node.value, list) else path
        text = r.string(item, where)
        if text is not None and not pattern.match(text):
            r.error(item, where, f"{text!r} is not {what}")
        elif text is not None:
            out.append(text)
    return tuple(out)


def _networks(r: Reader, node: Node, path: str) -> tuple[str, ...] | None:
    """Addresses or CIDR networks (Postfix mynetworks); host bits must be zero, as Postfix requires."""
    items = r.sequence(node, path)
    if items is None:
        return None
    out = []
    for i, item in enumerate(items):
        text = r.string(item, f"{path}[{i}]")
        if text is None:
            continue
        try:
            out.append(str(ipaddress.ip_network(text.strip(), strict=True)))
        except ValueError as exc:
            r.error(item, f"{path}[{i}]", f"{text!r} is not an address or network: {exc}")
    return tuple(out)


def _absolute(r: Reader, node: Node, path: str) -> str | None:
    """An absolute path, normalised (no trailing slash, no '..')."""
    text = r.string(node, path)
    if text is None:
        return None
    if not text.startswith("/"):
        r.error(node, path, f"{text!r} is not an absolute path")
        return None
    if ".." in text.split("/"):
        r.error(node, path, f"{text!r}: '..' is not allowed")
        return None
    return "/" + "/".join(p for p in text.split("/") if p)


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it."""
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def _storage(r: Reader, node: Node) -> StorageSpec | None:
    """The shared mailbox storage: where, what file system, and whether it must be a network one."""
    e = r.mapping(node, "mail.storage", STORAGE_KEYS, required=("path",))
    if e is None:
        return None
    path = _absolute(r, e["path"], "mail.storage.path") if "path" in e else None
    kind = r.choice(e["type"], "mail.storage.type", STORAGE_TYPES, "storage type") if "type" in e else "local"
    need = r.boolean(e["require_network"], "mail.storage.require_network") if "require_network" in e else False
    if kind == "local" and need:
        r.error(e["require_network"], "mail.storage.require_network",
                "type local contradicts require_network: true (name the network file system in type)")
        return None
    if path is None or kind is None or need is None:
        return None
    return StorageSpec(path=path, type=kind, require_network=need)


def _mailbox(r: Reader, node: Node) -> MailboxSpec | None:
    """Layout of the mailboxes; a virtual layout needs its root and the table of mailboxes."""
    e = r.mapping(node, "mail.mailbox", MAILBOX_KEYS)
    if e is None:
        return None
    before = len(r.problems)
    layout = "home"
    if "layout" in e:
        layout = r.choice(e["layout"], "mail.mailbox.layout", MAILBOX_LAYOUTS, "mailbox layout")
    root = _absolute(r, e["root"], "mail.mailbox.root") if "root" in e else None
    maps = None
    if "maps" in e:
        maps = r.string(e["maps"], "mail.mailbox.maps")
        if maps is not None and not TABLE_RE.match(maps):
            r.error(e["maps"], "mail.mailbox.maps",
                    f"{maps!r} is not a Postfix table like texthash:/etc/postfix/vmailbox")
    owner = MailboxSpec().owner
    if "owner" in e:
        owner = r.string(e["owner"], "mail.mailbox.owner")
        if owner is not None and not USER_RE.match(owner):
            r.error(e["owner"], "mail.mailbox.owner", f"{owner!r} is not a user name")
    if layout == "virtual":
        for key, value in (("root", root), ("maps", maps)):
            if value is None and key not in e:
                r.error(node, "mail.mailbox", f"layout virtual needs '{key}' "
                                              "(virtual_mailbox_base and virtual_mailbox_maps)")
    elif layout == "home":
        for key in ("maps", "owner"):
            if key in e:
                r.error(e[key], f"mail.mailbox.{key}", "applies only to layout: virtual "
                                                       "(with layout: home each user owns their Maildir)")
    if len(r.problems) > before or layout is None:
        return None
    return MailboxSpec(layout=layout, root=root, maps=maps, owner=owner)


def _tls(r: Reader, node: Node) -> TlsFilesSpec | None:
    """Certificate and key files."""
    e = r.mapping(node, "mail.tls", TLS_KEYS, required=TLS_KEYS)
    if e is None:
        return None
    cert = _absolute(r, e["cert"], "mail.tls.cert") if "cert" in e else None
    key = _absolute(r, e["key"], "mail.tls.key") if "key" in e else None
    return TlsFilesSpec(cert, key) if cert and key else None


def _health_page(r: Reader, node: Node) -> HealthPageSpec | None:
    """The HTTP check's page: where it is served from and the text the check expects."""
    e = r.mapping(node, "mail.health_page", HEALTH_KEYS)
    if e is None:
        return None
    default = HealthPageSpec()
    path = _absolute(r, e["path"], "mail.health_page.path") if "path" in e else default.path
    text = r.string(e["text"], "mail.health_page.text") if "text" in e else default.text
    if text is not None and any(ch in text for ch in "<>&\r\n"):
        r.error(e["text"], "mail.health_page.text", "must be plain text on one line (no <, >, & or line breaks)")
        return None
    return HealthPageSpec(path, text) if path and text else None


# -- realserver ------------------------------------------------------------------

def read_realserver(r: Reader, node: Node) -> RealServerDefaultsSpec | None:
    """Validate ``realserver:``."""
    e = r.mapping(node, "realserver", REALSERVER_KEYS)
    if e is None:
        return None
    before = len(r.problems)
    values: dict = {}
    if "interface" in e:
        text = r.string(e["interface"], "realserver.interface")
        if text is not None and not IFNAME_RE.match(text):
            r.error(e["interface"], "realserver.interface", f"{text!r} is not an interface name")
        values["interface"] = text
    if "nat_gateway" in e:
        values["nat_gateway"] = r.address(e["nat_gateway"], "realserver.nat_gateway")
    if "directors" in e:
        items = r.sequence(e["directors"], "realserver.directors") or []
        values["directors"] = tuple(a for a in (r.address(item, f"realserver.directors[{i}]")
                                                for i, item in enumerate(items)) if a)
    if "services" in e:
        values["services"] = _strings(r, e["services"], "realserver.services", NAME_RE, "a service name")
    if "state_file" in e:
        values["state_file"] = _absolute(r, e["state_file"], "realserver.state_file")
    if len(r.problems) > before:
        return None
    return RealServerDefaultsSpec(**values)


def dump_realserver(spec: RealServerDefaultsSpec) -> dict:
    """``realserver:`` with defaults left out."""
    out: dict = {}
    default = RealServerDefaultsSpec()
    for key in REALSERVER_KEYS:
        value = getattr(spec, key)
        if value != getattr(default, key):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def mail_owner_ids(owner: str) -> tuple[int, int]:
    """uid and gid of the virtual mailboxes' owner; KeyError naming the user when it does not exist."""
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise KeyError(f"user {owner!r} does not exist on this real server (create it with the same uid "
                       "on every real server: the mailboxes are shared)") from None
    return entry.pw_uid, entry.pw_gid


__all__ = ["dump_mail", "dump_realserver", "mail_owner_ids", "read_mail", "read_realserver"]
