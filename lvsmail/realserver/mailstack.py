"""The mail stack of a real server as changes: Postfix parameters, Dovecot or Courier-IMAP files, health page.

Everything a real server must share with the others comes from the cluster file's
``mail:`` section, so every real server greets with the same name, accepts the
same domains and delivers into the same mailboxes on the shared storage.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from lvsmail.realserver.changes import Change, DovecotDropIn, PostconfBackend, PostconfSet, WriteFile
from lvsmail.spec import MailSpec

#: Loopback networks Postfix trusts in any case (the default mynetworks_style=host would add only this host).
LOOPBACK_NETWORKS = ("127.0.0.0/8", "[::1]/128")

#: Dovecot's recommendations for mail on NFS when one user's sessions may land on several servers,
#: which is what LVS does without a Dovecot director in front (Dovecot 2.3 documentation, "NFS":
#: the multi-server setup that flushes NFS caches). fcntl locks work over NFSv3 (lockd) and NFSv4.
DOVECOT_SHARED_STORAGE = (
    ("mmap_disable", "yes"),  # NFS does not keep mmap()ed files coherent between clients
    ("mail_fsync", "always"),  # another server may read the mail right after it was written
    ("mail_nfs_storage", "yes"),  # flush NFS attribute caches before reading mail files
    ("mail_nfs_index", "yes"),  # ... and index files, which every server updates
    ("lock_method", "fcntl"),
)


@dataclass(frozen=True)
class MailPaths:
    """Where this real server's mail daemons keep their configuration (several instances may exist)."""

    postfix_dir: str = "/etc/postfix"
    dovecot_config: str = "/etc/dovecot/dovecot.conf"  # the main file; our drop-in sits in its conf.d
    courier_dir: str = "/etc/courier"

    @property
    def dovecot_dropin(self) -> str:
        """The drop-in Debian's dovecot.conf includes (``!include conf.d/*.conf``)."""
        return str(Path(self.dovecot_config).parent / "conf.d" / "90-lvsmail.conf")


def postfix_settings(mail: MailSpec, *, vips: tuple[str, ...], address: str, trusted: tuple[str, ...],
                     current_interfaces: str, owner_ids: tuple[int, int] | None) -> dict[str, str]:
    """main.cf parameters for a cluster member (pure).

    ``trusted``: extra addresses to put in mynetworks (the directors under NAT).
    ``current_interfaces``: inet_interfaces in force now; the VIPs and the address are added
    to it unless it is already ``all``, so an administrator's choice is kept.
    """
    networks = list(LOOPBACK_NETWORKS)
    for net in (*mail.mynetworks, *(_host_network(a) for a in trusted)):
        text = _postfix_network(net)
        if text not in networks:
            networks.append(text)
    settings = {
        "myhostname": mail.hostname,  # the same greeting on every real server (RFC 5321 4.3.1)
        "mydomain": mail.domain,
        "mydestination": ", ".join(mail.destinations),
        "mynetworks": " ".join(networks),
        "inet_interfaces": _interfaces(current_interfaces, (*vips, address)),
    }
    box = mail.mailbox
    if box.layout == "home":
        settings["home_mailbox"] = "Maildir/"  # trailing slash: Maildir, not mbox
    else:
        uid, gid = owner_ids or (0, 0)
        settings.update({
            "virtual_mailbox_domains": mail.domain,
            "virtual_mailbox_base": box.root or "",
            "virtual_mailbox_maps": box.maps or "",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
        })
    if mail.tls is not None:
        # smtpd_use_tls (the seed's setting) is the obsolete spelling of security level "may".
        settings.update({"smtpd_tls_cert_file": mail.tls.cert, "smtpd_tls_key_file": mail.tls.key,
                         "smtpd_tls_security_level": "may"})
    return settings


def _host_network(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _postfix_network(network: str) -> str:
    """Postfix writes IPv6 networks in brackets in mynetworks."""
    net = ipaddress.ip_network(network)
    return f"[{net.network_address}]/{net.prefixlen}" if net.version == 6 else str(net)


def _interfaces(current: str, needed: tuple[str, ...]) -> str:
    """inet_interfaces that include ``needed``: ``all`` stays, a list gets what is missing."""
    items = [x for x in re.split(r"[\s,]+", current.strip()) if x]
    if not items or "all" in items:
        return "all"
    for address in needed:
        if address not in items:
            items.append(address)
    return ", ".join(items)


def postfix_changes(mail: MailSpec, paths: MailPaths, postconf: PostconfBackend, **kwargs) -> list[Change]:
    """One change per main.cf parameter, in a stable order."""
    current = postconf.effective(paths.postfix_dir, "inet_interfaces")
    settings = postfix_settings(mail, current_interfaces=current, **kwargs)
    return [PostconfSet(paths.postfix_dir, name, value) for name, value in settings.items()]


def dovecot_text(mail: MailSpec, cluster: str,
                 owner_ids: tuple[int, int] | None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The drop-in's text and the settings Dovecot must then report (pure)."""
    box = mail.mailbox
    location = "maildir:~/Maildir" if box.layout == "home" else f"maildir:{box.root}/%d/%n"
    settings: list[tuple[str, str]] = [("mail_location", location)]
    if box.layout == "virtual" and owner_ids:
        # numeric: the owner's group may have another name than the user (nobody/nogroup)
        settings += [("mail_uid", str(owner_ids[0])), ("mail_gid", str(owner_ids[1]))]
    network = mail.storage is not None and mail.storage.type != "local"
    if network:
        settings += list(DOVECOT_SHARED_STORAGE)
    if mail.tls is not None:
        settings += [("ssl", "yes"), ("ssl_cert", f"<{mail.tls.cert}"), ("ssl_key", f"<{mail.tls.key}")]
    lines = [f"# lvsmail realserver join, cluster {cluster}: mail on the shared storage.",
             "# `lvsmail realserver leave` removes this file (or restores what it replaced)."]
    if network:
        lines.append(f"# {mail.storage.type} storage: Dovecot's settings for mail on NFS shared by several servers.")
    lines += [f"{key} = {value}" for key, value in settings]
    # Courier's MAXDAEMONS counterpart: at most this many IMAP processes.
    lines += ["service imap {", f"  process_limit = {mail.max_daemons}", "}"]
    return "\n".join(lines) + "\n", tuple(settings[:1] + [s for s in settings if s[0] == "mmap_disable"])


def dovecot_changes(mail: MailSpec, paths: MailPaths, cluster: str,
                    owner_ids: tuple[int, int] | None) -> list[Change]:
    """The drop-in next to the main configuration."""
    text, expect = dovecot_text(mail, cluster, owner_ids)
    return [DovecotDropIn(paths.dovecot_dropin, text, paths.dovecot_config, expect)]


def courier_settings(mail: MailSpec) -> dict[str, str]:
    """Courier-IMAP ``imapd`` variables, as in the seed deployment (pure)."""
    return {
        "ADDRESS": "0",  # every local address, the VIP on lo/tunl0 included
        "MAXDAEMONS": str(mail.max_daemons),
        "MAILDIRPATH": "Maildir",  # relative to each user's home, as Postfix's home_mailbox
    }


def edit_shell_vars(text: str, values: dict[str, str]) -> str:
    """Set ``NAME=value`` lines in a Courier-style file, keeping comments and every other line."""
    lines = text.splitlines()
    done = set()
    for i, line in enumerate(lines):
        match = re.match(r"\s*([A-Z_][A-Z0-9_]*)=", line)
        if match and match[1] in values:
            if match[1] in done:
                lines[i] = "#" + line  # a second assignment would override ours
                continue
            lines[i] = f"{match[1]}={values[match[1]]}"
            done.add(match[1])
    for name, value in values.items():
        if name not in done:
            lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def courier_changes(mail: MailSpec, paths: MailPaths) -> list[Change]:
    """The edited ``imapd`` file."""
    path = Path(paths.courier_dir) / "imapd"
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        text, mode = "", 0o644
    return [WriteFile(str(path), edit_shell_vars(text, courier_settings(mail)), mode, "Courier-IMAP settings",
                      "courier")]


def health_page_text(text: str) -> str:
    """A minimal HTML page whose body is the text the HTTP check expects."""
    return f"<!DOCTYPE html>\n<html><head><title>{text}</title></head><body>{text}</body></html>\n"
