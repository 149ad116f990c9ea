"""Reading a service's ``check:`` block into a CheckSpec.

Which keys a check accepts depends on its type, so a setting that the chosen
checker would silently ignore (``receive`` on an SMTP check) is an error that
names the type, rather than a surprise in production.
"""

from __future__ import annotations

import re
import shlex

from lvsmail.config.fields import Reader, describe, join
from lvsmail.config.keys import BY_PATH
from lvsmail.config.tree import Node
from lvsmail.spec import CHECK_TYPES, CheckSpec

#: Keys each check type accepts, from the documented key table (``on``/``off`` never connect, so take
#: only ``type``; ``credentials`` is AUTH for SMTP, RFC 4954).
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    kind: tuple(key.name for key in BY_PATH["services[].check"].keys if kind in key.types) for kind in CHECK_TYPES
}
#: Every key any check type accepts (to tell "unknown" from "not for this type").
ALL_KEYS = tuple(dict.fromkeys(key for keys in TYPE_KEYS.values() for key in keys))

#: TLS modes per type, default first.  Port 465/993/995/443 services start TLS
#: at once (RFC 8314 section 3.3); port 587 submission uses STARTTLS (RFC 6409, RFC 3207).
TLS_MODES: dict[str, tuple[str, ...]] = {
    "smtp": ("none", "starttls"), "submission": ("starttls", "none"), "smtps": ("implicit",),
    "imap": ("none", "starttls"), "imaps": ("implicit",),
    "pop3": ("none", "starttls"), "pop3s": ("implicit",),
    "https": ("implicit",),
}
#: HTTP methods a check may use (RFC 9110 section 9.3).
METHODS = ("GET", "HEAD", "POST")


def read_check(r: Reader, node: Node, path: str, forwardings: set[str]) -> CheckSpec | None:
    """Validate one ``check:`` mapping; ``forwardings`` are the service's effective methods."""
    if not node.is_mapping:
        r.error(node, path, f"expected a mapping such as {{type: smtp}}, got {describe(node)}")
        return None
    before = len(r.problems)
    entries = node.value
    kind = None
    if "type" not in entries:
        r.error(node, path, f"missing required key 'type'; expected one of {', '.join(CHECK_TYPES)}")
    else:
        kind = r.choice(entries["type"].node, join(path, "type"), CHECK_TYPES, "check type")
    allowed = TYPE_KEYS[kind] if kind else ALL_KEYS

    given: dict[str, Node] = {}
    for key, entry in entries.items():
        if key not in ALL_KEYS:
            r.unknown_key(entry.line, join(path, key), key, allowed)
        elif key not in allowed:
            users = ", ".join(t for t, keys in TYPE_KEYS.items() if key in keys)
            r.error(entry.line, join(path, key), f"does not apply to check type '{kind}' (only to {users})")
        elif key != "type":
            given[key] = entry.node

    values = _read_values(r, given, path)
    if kind:
        _cross_check(r, kind, node, given, values, path, forwardings)
    if kind is None or len(r.problems) > before:
        return None
    if kind in TLS_MODES:
        values.setdefault("tls", TLS_MODES[kind][0])
    return CheckSpec(type=kind, **values)


def _read_values(r: Reader, given: dict[str, Node], path: str) -> dict:
    """Read each present key with its own type; invalid ones are left out (and reported)."""
    readers = {
        "interval": r.number, "timeout": r.number,
        "rise": lambda n, p: r.integer(n, p, 1), "fall": lambda n, p: r.integer(n, p, 1),
        "start": lambda n, p: r.choice(n, p, ("up", "down"), "start state"),
        "port": lambda n, p: r.integer(n, p, 1, 65535),
        "via": lambda n, p: r.choice(n, p, ("direct", "vip"), "check route"),
        "helo": lambda n, p: _word(r, n, p), "host": lambda n, p: _word(r, n, p),
        "server_name": lambda n, p: _word(r, n, p),
        "tls": r.string, "verify": r.boolean, "receive_regex": r.boolean,
        "ca_file": lambda n, p: _abspath(r, n, p, "the CA bundle"),
        "credentials": _credentials(r),
        "mailbox": r.string, "receive": r.string,
        "path": lambda n, p: _http_path(r, n, p),
        "method": lambda n, p: r.choice(n, p, METHODS, "HTTP method"),
        "status": lambda n, p: r.integer(n, p, 100, 599),
        "command": lambda n, p: _command(r, n, p),
    }
    values = {}
    for key, value_node in given.items():
        value = readers[key](value_node, join(path, key))
        if value is not None:
            values[key] = value
    return values


def _cross_check(r: Reader, kind: str, node: Node, given: dict[str, Node], values: dict, path: str,
                 forwardings: set[str]) -> None:
    """Rules that involve more than one key of the check, or the service."""
    if "tls" in values and values["tls"] not in TLS_MODES[kind]:
        r.error(given["tls"], join(path, "tls"),
                f"{values['tls']!r} is not a TLS mode for {kind}; expected one of {', '.join(TLS_MODES[kind])}")
    tls = values.get("tls", TLS_MODES.get(kind, ("none",))[0])
    if tls == "none":
        for key in ("verify", "ca_file", "server_name"):
            if key in given:
                r.error(given[key], join(path, key), "applies only with tls: starttls or implicit")
    if "mailbox" in given and "credentials" not in given:
        r.error(given["mailbox"], join(path, "mailbox"), "needs credentials (a mailbox opens only after login)")
    if values.get("receive_regex") and "receive" not in given:
        r.error(given["receive_regex"], join(path, "receive_regex"), "needs receive (the regex to match)")
    if values.get("receive_regex") and "receive" in values:
        try:
            re.compile(values["receive"])
        except re.error as exc:
            r.error(given["receive"], join(path, "receive"), f"is not a valid regular expression: {exc}")
    if values.get("method") == "HEAD" and "receive" in given:
        r.error(given["receive"], join(path, "receive"), "cannot be matched: a HEAD response has no body")
    if kind == "external" and "command" not in given:
        r.error(node, path, "missing required key 'command' (external checks run it)")
    if values.get("via") == "vip" and not forwardings <= {"dr", "tun"}:
        r.error(given["via"], join(path, "via"),
                "checks through the VIP need dr or tun forwarding (with nat the real server does not own the VIP)")


def _word(r: Reader, node: Node, path: str) -> str | None:
    """A single token such as a host name: no spaces."""
    text = r.string(node, path)
    if text is not None and any(ch.isspace() for ch in text):
        r.error(node, path, f"{text!r} must be a single word (a host name)")
        return None
    return text


def _abspath(r: Reader, node: Node, path: str, what: str) -> str | None:
    """An absolute file path: the director runs from anywhere, usually as root."""
    text = r.string(node, path)
    if text is not None and not text.startswith("/"):
        r.error(node, path, f"must be the absolute path of {what}, got {text!r}")
        return None
    return text


def _credentials(r: Reader):
    """Reader for ``credentials``: a path, and a plain refusal if it looks like a secret."""
    def read(node: Node, path: str) -> str | None:
        text = r.string(node, path)
        if text is not None and not text.startswith("/"):
            r.error(node, path, "must be the absolute path of a root-only file holding the login, "
                                "never the login or password itself")
            return None
        return text
    return read


def _http_path(r: Reader, node: Node, path: str) -> str | None:
    """A request path, origin-form as in RFC 9112 section 3.2.1: it starts with '/'."""
    text = r.string(node, path)
    if text is not None and not text.startswith("/"):
        r.error(node, path, f"must start with '/', got {text!r} (write '/{text}')")
        return None
    return text


def _command(r: Reader, node: Node, path: str) -> str | None:
    """An external check command whose program is given by absolute path (no PATH lookup as root)."""
    text = r.string(node, path)
    if text is None:
        return None
    try:
        words = shlex.split(text)
    except ValueError as exc:
        r.error(node, path, f"cannot be split into words: {exc}")
        return None
    if not words or not words[0].startswith("/"):
        r.error(node, path, f"must start with an absolute program path, got {text!r}")
        return None
    return text
