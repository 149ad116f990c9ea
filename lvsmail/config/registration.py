"""The cluster file's ``registration:`` section: where the directors' member API listens and what it accepts.

The section is read on both sides: a director serves the API when ``listen`` is
set; a real server reads ``directors`` to know whom to contact. The secret is
never in the file, only the path of a root-only key file, like check credentials.
"""

from __future__ import annotations

import ipaddress
import re

from lvsmail.config.fields import Reader, join
from lvsmail.config.keys import names
from lvsmail.config.tree import Node
from lvsmail.spec import RegistrationSpec

KEYS = names("registration")
_HOSTPORT = re.compile(r"\[([^\]]+)\]:(\d+)\Z|([^:\[\]]+):(\d+)\Z")
_URL = re.compile(r"(https?)://(\[[^\]]+\]:\d+|[^:/\[\]]+:\d+|\[[^\]]+\]|[^:/\[\]]+)/?\Z")


def read_registration(r: Reader, node: Node) -> RegistrationSpec | None:
    """Validate the section; every problem is recorded with its line, None when any was found."""
    path = "registration"
    before = len(r.problems)  # before the mapping: a missing token_file is found there and must stop the section
    e = r.mapping(node, path, KEYS, required=("token_file",))
    if e is None:
        return None
    values: dict = {}
    if "token_file" in e:
        values["token_file"] = _absolute(r, e["token_file"], join(path, "token_file"))
    if "listen" in e:
        # One entry, or a list: a director pair shares the file and each binds its own address.
        listen = e["listen"]
        items = (r.sequence(listen, join(path, "listen")) or []) if isinstance(listen.value, list) else [listen]
        found = []
        for i, item in enumerate(items):
            where = join(path, f"listen[{i}]") if item is not listen else join(path, "listen")
            text = r.string(item, where)
            hp = None if text is None else _hostport(r, item, where, text)
            if hp is not None:
                found.append(_format_hostport(*hp))
        if not items:
            r.error(listen, join(path, "listen"), "must name at least one address:port")
        values["listen"] = tuple(dict.fromkeys(found))
        if "allowed_networks" not in e:
            r.error(node, path, "listen needs allowed_networks (the networks members may register from)")
    if "directors" in e:
        items = r.sequence(e["directors"], join(path, "directors")) or []
        urls = [_director(r, item, join(path, f"directors[{i}]")) for i, item in enumerate(items)]
        if len({u for u in urls if u}) != len([u for u in urls if u]):
            r.error(e["directors"], join(path, "directors"), "a director is listed twice")
        values["directors"] = tuple(urls)
    if "allowed_networks" in e:
        items = r.sequence(e["allowed_networks"], join(path, "allowed_networks")) or []
        nets = [_network(r, item, join(path, f"allowed_networks[{i}]")) for i, item in enumerate(items)]
        if not items:
            r.error(e["allowed_networks"], join(path, "allowed_networks"), "must list at least one network")
        values["allowed_networks"] = tuple(nets)
    if "max_skew" in e:
        values["max_skew"] = r.number(e["max_skew"], join(path, "max_skew"))
        if values["max_skew"] is not None and values["max_skew"] > 3600:
            r.error(e["max_skew"], join(path, "max_skew"), "must be at most 3600 seconds (keep clocks in sync)")
    if "max_body" in e:
        values["max_body"] = r.integer(e["max_body"], join(path, "max_body"), 256, 1048576)
    if "drain_timeout" in e:
        values["drain_timeout"] = r.number(e["drain_timeout"], join(path, "drain_timeout"))
    for key in ("tls_cert", "tls_key", "tls_ca", "members_file"):
        if key in e:
            values[key] = _absolute(r, e[key], join(path, key))
    if ("tls_cert" in e) != ("tls_key" in e):
        r.error(node, path, "tls_cert and tls_key go together (the API's certificate and its private key)")
    if "tls_cert" in e and "listen" not in e:
        r.error(e["tls_cert"], join(path, "tls_cert"), "has no effect without listen")
    if len(r.problems) > before:
        return None
    return RegistrationSpec(**values)


def dump_registration(spec: RegistrationSpec) -> dict:
    """The section as an administrator would write it: defaults left out."""
    out: dict = {}
    if spec.listen:
        out["listen"] = spec.listen[0] if len(spec.listen) == 1 else list(spec.listen)
    if spec.directors:
        out["directors"] = list(spec.directors)
    out["token_file"] = spec.token_file
    if spec.allowed_networks:
        out["allowed_networks"] = list(spec.allowed_networks)
    default = RegistrationSpec(token_file="/")
    for key in ("max_skew", "drain_timeout"):
        value = getattr(spec, key)
        if value != getattr(default, key):
            out[key] = int(value) if float(value).is_integer() else value
    if spec.max_body != default.max_body:
        out["max_body"] = spec.max_body
    for key in ("tls_cert", "tls_key", "tls_ca", "members_file"):
        if getattr(spec, key) is not None:
            out[key] = getattr(spec, key)
    return out


def _absolute(r: Reader, node: Node, path: str) -> str | None:
    """A path that does not depend on the daemon's working directory."""
    text = r.string(node, path)
    if text is not None and not text.startswith("/"):
        r.error(node, path, f"{text!r} is not an absolute path")
        return None
    return text


def _hostport(r: Reader, node: Node, path: str, text: str) -> tuple[str, int] | None:
    """``address:port`` or ``[v6]:port``; host names are refused (never resolved)."""
    match = _HOSTPORT.match(text.strip())
    if not match:
        r.error(node, path, f"{text!r} is not address:port (or [IPv6 address]:port)")
        return None
    host, port = (match[1], match[2]) if match[1] else (match[3], match[4])
    address = r.parse_address(node, path, host)
    if not 1 <= int(port) <= 65535:
        r.error(node, path, f"port {port} must be between 1 and 65535")
        return None
    return None if address is None else (address, int(port))


def _format_hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _director(r: Reader, node: Node, path: str) -> str | None:
    """A director's base URL; ``address:port`` is short for ``http://address:port``."""
    text = r.string(node, path)
    if text is None:
        return None
    text = text.strip()
    match = _URL.match(text)
    if match:
        scheme, netloc = match[1], match[2]
    elif "://" in text:
        r.error(node, path, f"{text!r}: expected http://address:port or https://address:port, no path")
        return None
    else:
        scheme, netloc = "http", text
    if netloc.startswith("[") and netloc.endswith("]") or ":" not in netloc.replace("[", "").split("]")[-1]:
        r.error(node, path, f"{text!r}: give the port (the API has no default port)")
        return None
    hp = _hostport(r, node, path, netloc)
    return None if hp is None else f"{scheme}://{_format_hostport(*hp)}"


def _network(r: Reader, node: Node, path: str) -> str | None:
    """A CIDR network with no host bits set (a typo there would widen or move the network)."""
    text = r.string(node, path)
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text.strip(), strict=True).compressed
    except ValueError as exc:
        r.error(node, path, f"{text!r} is not a network like 192.0.2.0/24: {exc}")
        return None
