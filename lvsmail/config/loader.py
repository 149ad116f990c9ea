"""The cluster file: YAML in, a validated ClusterSpec out (and back, for importers).

Every problem is collected in one pass and raised together as a ConfigError,
each naming file, line and key path, so an administrator fixes the whole file
in one edit.  Checks are hand-written over a line-annotated tree: a schema
library would report pydantic-style locations without YAML line numbers and
could not be fed by the ldirectord importer's own line numbers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from lvsmail.config.availability import dump_availability, read_availability
from lvsmail.config.checks import TLS_MODES, read_check
from lvsmail.config.director_profile import dump_kernel, dump_sync, read_kernel, read_sync
from lvsmail.config.errors import ConfigError, Problem
from lvsmail.config.failover import dump_failover, read_failover
from lvsmail.config.fields import Reader, join
from lvsmail.config.keys import names
from lvsmail.config.mail import dump_mail, dump_realserver, read_mail, read_realserver
from lvsmail.config.metrics import dump_metrics, read_metrics
from lvsmail.config.registration import dump_registration, read_registration
from lvsmail.config.tree import Node, from_yaml
from lvsmail.spec import (
    FORWARDING,
    FORWARDING_ALIASES,
    SCHEDULERS,
    AlertsSpec,
    CheckSpec,
    ClusterSpec,
    RealServerSpec,
    ServiceSpec,
    TimeoutsSpec,
)

#: Optional top-level sections that belong to one part of lvsmail each, validated by that part's own
#: module: key -> (read(reader, node) -> spec or None, dump(spec) -> plain data). ClusterSpec has a field
#: of the same name, None when the section is absent.
SECTIONS: dict[str, tuple[Callable[[Reader, Node], object], Callable[[object], object]]] = {
    "sync": (read_sync, dump_sync),
    "kernel": (read_kernel, dump_kernel),
    "registration": (read_registration, dump_registration),
    "mail": (read_mail, dump_mail),
    "realserver": (read_realserver, dump_realserver),
    "failover": (read_failover, dump_failover),
    "availability": (read_availability, dump_availability),
    "metrics": (read_metrics, dump_metrics),
}

#: Keys allowed at each level of the cluster file, from the documented key table.
TOP_KEYS = names("")
ALERT_KEYS = names("alerts")
SERVICE_KEYS = names("services[]")
REAL_KEYS = names("services[].realservers[]")
TIMEOUT_KEYS = names("timeouts")
#: Cluster, service and real-server names: safe in logs, file names and command lines.
EMAIL_RE = re.compile(r"[^@\s<>]+@[^@\s<>]+\Z")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_FAMILY_NAME = {"inet": "IPv4", "inet6": "IPv6"}


def load_cluster(path: str | Path) -> ClusterSpec:
    """Read and validate a cluster file; raises ConfigError listing every problem."""
    source = str(path)
    if "\0" in source:  # Path raises a bare ValueError for it; no file name holds a NUL byte
        raise ConfigError([Problem(repr(source[:80]), None, "",
                                   "cannot read the cluster file: the file name contains a NUL byte")])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(source, None, "", f"cannot read the cluster file: {reason}")]) from None
    return parse_cluster(text, source)


def parse_cluster(text: str, source: str = "<string>") -> ClusterSpec:
    """Validate cluster-file YAML given as text; ``source`` names it in messages."""
    tree, problems = from_yaml(text, source)
    return spec_from_tree(tree, source, problems)


def spec_from_tree(tree: Node | None, source: str, problems: list[Problem] = ()) -> ClusterSpec:
    """Validate an already-parsed document (YAML or imported) into a ClusterSpec.

    ``problems`` already found while reading the source are reported with the rest.
    """
    reader = Reader(source)
    reader.problems.extend(problems)
    _refuse_nul_bytes(reader, tree)
    spec = _cluster(reader, tree)
    if reader.problems or spec is None:
        raise ConfigError(reader.problems)
    return spec


def _refuse_nul_bytes(r: Reader, tree: Node | None) -> None:
    """A problem for every string holding a NUL byte (YAML's ``"\\0"`` escape, an import's text).

    No setting can hold one: paths, commands and names reach the kernel as C strings, where
    ``os`` and ``pathlib`` raise a bare ValueError for them. Walked without recursion, so a
    document nested as deep as YAML allows costs no stack.
    """
    stack = [("", tree)] if tree is not None else []
    while stack:
        path, node = stack.pop()
        if isinstance(node.value, dict):
            for key, entry in node.value.items():
                if "\0" in str(key):
                    r.error(entry.node, path, f"key {key!r} contains a NUL byte")
                stack.append((join(path, key), entry.node))
        elif isinstance(node.value, list):
            stack.extend((join(path, i), item) for i, item in enumerate(node.value))
        elif any(isinstance(v, str) and "\0" in v for v in (node.value, node.text)):
            r.error(node, path, f"{clip_value(node)} contains a NUL byte; no setting can hold one")


def clip_value(node: Node) -> str:
    """A scalar as quoted in a problem, at most 60 characters."""
    text = repr(node.text if node.text is not None else node.value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- cluster -------------------------------------------------------------------

def _cluster(r: Reader, tree: Node | None) -> ClusterSpec | None:
    """The top level: name, VIPs, IPVS timeouts, services and cross-service rules."""
    if tree is None:
        r.error(None, "", "the file is empty; expected a mapping with cluster, vips and services")
        return None
    if not tree.is_mapping:
        r.error(tree, "", "the top level must be a mapping with cluster, vips and services")
        return None
    top = r.mapping(tree, "", TOP_KEYS, required=("cluster", "services"))
    name = _name(r, top["cluster"], "cluster") if "cluster" in top else None
    vips = _vips(r, top["vips"]) if "vips" in top else ()
    timeouts = _timeouts(r, top["timeouts"]) if "timeouts" in top else TimeoutsSpec()
    maintenance = _absolute_path(r, top["maintenance_dir"], "maintenance_dir") if "maintenance_dir" in top else None
    alerts = _alerts(r, top["alerts"]) if "alerts" in top else None
    services: list[ServiceSpec] = []
    items = r.sequence(top["services"], "services") if "services" in top else None
    for index, item in enumerate(items or ()):
        service = _service(r, item, f"services[{index}]", None if vips is None else set(vips))
        if service is not None:
            services.append(service)
            _unique_service(r, service, item, f"services[{index}]", services[:-1], items)
    sections = {key: read(r, top[key]) for key, (read, _dump) in SECTIONS.items() if key in top}
    if sections.get("sync") is not None:
        _sync_without_mixed_families(r, top["sync"], services)
    if r.problems:
        return None
    return ClusterSpec(name=name, vips=tuple(vips), services=tuple(services), timeouts=timeouts,
                       maintenance_dir=maintenance, alerts=alerts, source=r.source, **sections)


def _sync_without_mixed_families(r: Reader, node: Node, services: list[ServiceSpec]) -> None:
    """Refuse ``sync:`` beside a tun real server of the other address family: the kernel starts no
    sync daemon while such a destination exists, and adds none while a daemon runs (EINVAL)."""
    for svc in services:
        for rs in svc.realservers:
            if svc.family and _family(rs.address) != svc.family:
                r.error(node, "sync", f"service {svc.name} has {rs.address}, an {_FAMILY_NAME[_family(rs.address)]} "
                                      f"real server in an {_FAMILY_NAME[svc.family]} service; the kernel runs no "
                                      "connection sync daemon beside real servers of another address family")


def _name(r: Reader, node: Node, path: str) -> str | None:
    """A name used in logs and commands: letters, digits, '.', '_' and '-'."""
    text = r.string(node, path)
    if text is not None and not NAME_RE.match(text):
        r.error(node, path, f"{text!r} is not a valid name (letters, digits, '.', '_', '-'; at most 63)")
        return None
    return text


def _vips(r: Reader, node: Node) -> tuple[str, ...] | None:
    """The addresses the director pair owns and moves on failover."""
    items = r.sequence(node, "vips")
    if items is None:
        return None
    seen: dict[str, int | None] = {}
    for index, item in enumerate(items):
        addr = r.address(item, f"vips[{index}]")
        if addr in seen:
            r.error(item, f"vips[{index}]", f"{addr} is listed twice (first at line {seen[addr]})")
        elif addr is not None:
            seen[addr] = item.line
    return tuple(seen)


def _timeouts(r: Reader, node: Node) -> TimeoutsSpec:
    """IPVS connection timeouts, as ``ipvsadm --set tcp tcpfin udp`` takes them."""
    entries = r.mapping(node, "timeouts", TIMEOUT_KEYS) or {}
    values = {key: r.integer(value, join("timeouts", key), 1) for key, value in entries.items()}
    return TimeoutsSpec(**values)


def _absolute_path(r: Reader, node: Node, path: str) -> str | None:
    """A file-system path; absolute, because the director's working directory is not the admin's."""
    text = r.string(node, path)
    if text is not None and not text.startswith("/"):
        r.error(node, path, f"{text!r} is not an absolute path")
        return None
    return text


def _alerts(r: Reader, node: Node) -> AlertsSpec | None:
    """Mail (ldirectord's emailalert, emailalertfreq) and webhook announcements of transitions."""
    e = r.mapping(node, "alerts", ALERT_KEYS)
    if e is None:
        return None
    values: dict = {}
    if "email" in e:
        items = (r.sequence(e["email"], "alerts.email") or []) if isinstance(e["email"].value, list) else [e["email"]]
        addrs = [r.string(item, f"alerts.email[{i}]") for i, item in enumerate(items)]
        for i, (item, addr) in enumerate(zip(items, addrs)):
            if addr is not None and not EMAIL_RE.match(addr):
                r.error(item, f"alerts.email[{i}]", f"{addr!r} is not a mail address")
        values["email"] = tuple(a for a in addrs if a)
    if "email_from" in e:
        sender = r.string(e["email_from"], "alerts.email_from")
        if sender is not None and not EMAIL_RE.match(sender):
            r.error(e["email_from"], "alerts.email_from", f"{sender!r} is not a mail address")
        values["email_from"] = sender
    if "smtp" in e:
        text = r.string(e["smtp"], "alerts.smtp")
        if text is not None:
            host, _, port = text.rpartition(":") if text.count(":") == 1 or text.startswith("[") else (text, "", "")
            host = host.strip("[]") or text
            if port and not port.isdigit():
                r.error(e["smtp"], "alerts.smtp", f"{text!r}: expected host or host:port")
            values["smtp_host"], values["smtp_port"] = host, int(port) if port.isdigit() else 25
    if "repeat" in e:
        values["repeat"] = r.integer(e["repeat"], "alerts.repeat", 0)
    if "webhook" in e:
        url = r.string(e["webhook"], "alerts.webhook")
        if url is not None and not url.startswith(("http://", "https://")):
            r.error(e["webhook"], "alerts.webhook", f"{url!r} is not an http(s) URL")
        values["webhook"] = url
    if "email" in values and not values["email"] and "webhook" not in values:
        r.error(node, "alerts", "no recipients: give email addresses or a webhook")
    return AlertsSpec(**{k: v for k, v in values.items() if v is not None})


def _unique_service(r: Reader, service: ServiceSpec, node: Node, path: str,
                    earlier: list[ServiceSpec], items: list[Node]) -> None:
    """Two services with one name or one kernel identity cannot both exist."""
    for other in earlier:
        first = _line_of_name(items, other.name)
        if other.name == service.name:
            r.error(node.value["name"].node, join(path, "name"),
                    f"duplicate service name {service.name!r} (first at line {first})")
        if _identity(other) == _identity(service):
            r.error(node, path, f"{service.label} is already defined by service {other.name!r} (line {first})")


def _line_of_name(items: list[Node], name: str) -> int | None:
    """Line of the service whose name is ``name`` (for 'first at line N')."""
    for item in items:
        entry = item.value.get("name") if item.is_mapping else None
        if entry is not None and entry.node.text == name:
            return item.line
    return None


def _identity(s: ServiceSpec) -> tuple:
    """What the kernel keys a virtual service on."""
    return (s.family, s.fwmark) if s.fwmark is not None else (s.family, s.protocol, s.vip, s.port)


# -- services ------------------------------------------------------------------

@dataclass
class _Frame:
    """What a real server needs to know about its service to be validated."""

    family: str | None
    port: int | None  # the service port; None for fwmark services
    forwarding: str | None


def _service(r: Reader, node: Node, path: str, vips: set[str] | None) -> ServiceSpec | None:
    """One virtual service with its real servers, fallback and check."""
    before = len(r.problems)  # before the mapping: a missing name is found there and must stop the service
    e = r.mapping(node, path, SERVICE_KEYS, required=("name",))
    if e is None:
        return None
    name = _name(r, e["name"], join(path, "name")) if "name" in e else None
    family, vip, protocol, port, fwmark = _service_identity(r, node, e, path, vips)

    scheduler = _opt(r, e, path, "scheduler", "wlc", lambda n, p: r.choice(n, p, SCHEDULERS, "scheduler"))
    persistent = _opt(r, e, path, "persistent", 0, lambda n, p: r.integer(n, p, 0, 2**31 - 1))
    netmask = _netmask(r, e["netmask"], join(path, "netmask"), family, persistent) if "netmask" in e else ""
    forwarding = _opt(r, e, path, "forwarding", "dr", _forwarding(r))
    quiescent = _opt(r, e, path, "quiescent", False, r.boolean)

    frame = _Frame(family, port, forwarding)
    reals = _realservers(r, e["realservers"], join(path, "realservers"), frame) if "realservers" in e else ()
    fallback = _realserver(r, e["fallback"], join(path, "fallback"), frame) if "fallback" in e else None
    forwardings = {rs.forwarding for rs in reals} | ({forwarding} if forwarding else set())
    check = read_check(r, e["check"], join(path, "check"), forwardings) if "check" in e else None
    if check is not None and check.via == "vip" and (vip is None or family != "inet"):
        node_via = e["check"].value["via"].node if e["check"].is_mapping and "via" in e["check"].value else e["check"]
        r.error(node_via, join(path, "check.via"),
                "checks through the VIP need an IPv4 VIP service (not fwmark, not IPv6)")
    if len(r.problems) > before:
        return None
    return ServiceSpec(name=name, family=family, vip=vip, protocol=protocol, port=port, fwmark=fwmark,
                       scheduler=scheduler, persistent=persistent, netmask=netmask, forwarding=forwarding,
                       quiescent=quiescent, realservers=tuple(reals), fallback=fallback, check=check)


def _opt(r: Reader, entries: dict[str, Node], path: str, key: str, default, read):
    """Read an optional key with ``read(node, path)``, or return its default."""
    return read(entries[key], join(path, key)) if key in entries else default


def _forwarding(r: Reader):
    """Reader for a forwarding method, accepting ldirectord/ipvsadm aliases."""
    def read(node: Node, path: str) -> str | None:
        return r.choice(node, path, FORWARDING, "forwarding method", FORWARDING_ALIASES)
    return read


def _service_identity(r: Reader, node: Node, e: dict[str, Node], path: str, vips: set[str] | None):
    """(family, vip, protocol, port, fwmark): either an address service or a firewall-mark one."""
    if "fwmark" in e:
        for key in ("vip", "protocol", "port"):
            if key in e:
                r.error(e[key], join(path, key), "cannot be combined with fwmark "
                        "(a firewall-mark service takes whatever traffic the mark selects)")
        fwmark = r.integer(e["fwmark"], join(path, "fwmark"), 1, 2**32 - 1)
        family = _opt(r, e, path, "family", "inet",
                      lambda n, p: r.choice(n, p, ("inet", "inet6"), "address family"))
        return family, None, None, None, fwmark
    if "family" in e:
        r.error(e["family"], join(path, "family"), "applies only to fwmark services (a vip has its own family)")
    if "vip" not in e:
        r.error(node, path, "needs either vip (with port) or fwmark")
        return None, None, None, None, None
    vip = r.address(e["vip"], join(path, "vip"))
    if vip is not None and vips is not None and vip not in vips:
        r.error(e["vip"], join(path, "vip"), f"{vip} is not listed in vips (the addresses the director pair owns)")
    protocol = _opt(r, e, path, "protocol", "tcp", lambda n, p: r.choice(n, p, ("tcp", "udp"), "protocol"))
    port = None
    if "port" in e:
        port = r.integer(e["port"], join(path, "port"), 1, 65535)
    else:
        r.error(node, path, "missing required key 'port' (a vip service listens on one port; or use fwmark)")
    return _family(vip) if vip else None, vip, protocol, port, None


def _family(address: str) -> str:
    """'inet' or 'inet6' for a normalised address."""
    return "inet6" if ":" in address else "inet"


def _netmask(r: Reader, node: Node, path: str, family: str | None, persistent: int | None) -> str | None:
    """Persistence granularity: a contiguous dotted mask (IPv4) or a prefix length 1..128 (IPv6)."""
    if persistent == 0:
        r.error(node, path, "has no effect without persistent (set persistent to a number of seconds)")
        return None
    if family == "inet6":
        text = node.text if node.text is not None else ""
        if isinstance(node.value, bool) or not text.isdigit() or not 1 <= int(text) <= 128:
            r.error(node, path, f"expected an IPv6 prefix length between 1 and 128, got {text!r}")
            return None
        return str(int(text))
    text = r.string(node, path)
    if text is None or family is None:
        return None
    try:
        network = ipaddress.IPv4Network(f"0.0.0.0/{text}")
    except ValueError:
        network = None
    if network is None or "." not in text or network.prefixlen == 0:
        r.error(node, path, f"{text!r} is not a contiguous IPv4 netmask like 255.255.255.0")
        return None
    return str(network.netmask)


# -- real servers --------------------------------------------------------------

def _realservers(r: Reader, node: Node, path: str, frame: _Frame) -> tuple[RealServerSpec, ...]:
    """The pool; each address:port may appear once, each label once."""
    items = r.sequence(node, path) or []
    reals: list[RealServerSpec] = []
    seen: dict[tuple, int | None] = {}
    names: dict[str, int | None] = {}
    for index, item in enumerate(items):
        rs = _realserver(r, item, f"{path}[{index}]", frame)
        if rs is None:
            continue
        key = (rs.address, rs.port)
        if key in seen:
            r.error(item, f"{path}[{index}]", f"duplicate real server {_hostport(*key)} (first at line {seen[key]})")
            continue
        if rs.name is not None and rs.name in names:
            r.error(item, f"{path}[{index}].name", f"duplicate real server name {rs.name!r} "
                                                   f"(first at line {names[rs.name]})")
            continue
        seen[key] = item.line
        if rs.name is not None:
            names[rs.name] = item.line
        reals.append(rs)
    return tuple(reals)


def _realserver(r: Reader, node: Node, path: str, frame: _Frame) -> RealServerSpec | None:
    """A real server (or fallback): a shorthand ``addr``/``addr:port``/``[v6]:port`` or a mapping."""
    before = len(r.problems)
    weight, forwarding, name, where = 1, frame.forwarding, None, node
    if node.is_mapping:
        e = r.mapping(node, path, REAL_KEYS, required=("address",)) or {}
        address = r.address(e["address"], join(path, "address")) if "address" in e else None
        port = _opt(r, e, path, "port", None, lambda n, p: r.integer(n, p, 1, 65535))
        weight = _opt(r, e, path, "weight", 1, lambda n, p: r.integer(n, p, 0, 65535))
        forwarding = _opt(r, e, path, "forwarding", frame.forwarding, _forwarding(r))
        name = _name(r, e["name"], join(path, "name")) if "name" in e else None
        where = e.get("port", node)
    else:
        address, port = _shorthand(r, node, path)
    if port is None:
        # Port 0 on a fwmark service keeps each packet's own destination port, nat
        # included (net/netfilter/ipvs/ip_vs_core.c, ip_vs_schedule: dest->port ?: vport).
        port = frame.port if frame.port is not None else 0
    if address and frame.family and _family(address) != frame.family and forwarding != "tun":
        r.error(node, path, f"{address} is {_FAMILY_NAME[_family(address)]} but the service is "
                            f"{_FAMILY_NAME[frame.family]}; mixing families needs forwarding tun")
    if forwarding in ("dr", "tun") and frame.port is not None and port != frame.port:
        r.error(where, path, f"port {port} differs from the service port {frame.port}, but {forwarding} "
                             "forwarding cannot change ports (only nat can)")
    if len(r.problems) > before or address is None or forwarding is None:
        return None
    return RealServerSpec(address=address, port=port, weight=weight, forwarding=forwarding, name=name)


def _shorthand(r: Reader, node: Node, path: str) -> tuple[str | None, int | None]:
    """Split ``addr``, ``addr:port``, ``[v6addr]:port`` or a bare IPv6 address."""
    text = r.string(node, path)
    if text is None:
        return None, None
    text = text.strip()
    if text.startswith("["):
        match = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", text)
        if not match:
            r.error(node, path, f"{text!r} is not '[IPv6 address]:port'")
            return None, None
        host, port_text = match[1], match[2]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    address = r.parse_address(node, path, host)
    if port_text is None:
        return address, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        r.error(node, path, f"port {port_text!r} in {text!r} must be between 1 and 65535")
        return address, None
    return address, int(port_text)


def _hostport(address: str, port: int) -> str:
    """``a:p`` or ``[a]:p`` as administrators write it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# -- dump ----------------------------------------------------------------------

def dump_cluster(spec: ClusterSpec) -> str:
    """YAML an administrator would write for ``spec``: defaults left out, shorthands used."""
    doc: dict = {"cluster": spec.name}
    if spec.vips:
        doc["vips"] = list(spec.vips)
    timeouts = {key: getattr(spec.timeouts, key) for key in TIMEOUT_KEYS if getattr(spec.timeouts, key) is not None}
    if timeouts:
        doc["timeouts"] = timeouts
    if spec.maintenance_dir:
        doc["maintenance_dir"] = spec.maintenance_dir
    if spec.alerts:
        doc["alerts"] = _dump_alerts(spec.alerts)
    doc["services"] = [_dump_service(s) for s in spec.services]
    for key, (_read, dump) in SECTIONS.items():
        if getattr(spec, key) is not None:
            doc[key] = dump(getattr(spec, key))
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def _dump_alerts(a: AlertsSpec) -> dict:
    out: dict = {}
    if a.email:
        out["email"] = list(a.email)
    default = AlertsSpec()
    if a.email_from != default.email_from:
        out["email_from"] = a.email_from
    if (a.smtp_host, a.smtp_port) != (default.smtp_host, default.smtp_port):
        host = f"[{a.smtp_host}]" if ":" in a.smtp_host else a.smtp_host
        out["smtp"] = f"{host}:{a.smtp_port}"
    if a.repeat:
        out["repeat"] = a.repeat
    if a.webhook:
        out["webhook"] = a.webhook
    return out


def _dump_service(s: ServiceSpec) -> dict:
    """One service as a mapping, in the order the schema documents."""
    d: dict = {"name": s.name}
    if s.fwmark is not None:
        d["fwmark"] = s.fwmark
        if s.family != "inet":
            d["family"] = s.family
    else:
        d["vip"] = s.vip
        if s.protocol != "tcp":
            d["protocol"] = s.protocol
        d["port"] = s.port
    for key, default in (("scheduler", "wlc"), ("persistent", 0)):
        if getattr(s, key) != default:
            d[key] = getattr(s, key)
    if s.netmask:
        d["netmask"] = int(s.netmask) if s.netmask.isdigit() else s.netmask
    if s.forwarding != "dr":
        d["forwarding"] = s.forwarding
    if s.quiescent:
        d["quiescent"] = True
    if s.fallback is not None:
        d["fallback"] = _dump_real(s.fallback, s)
    d["realservers"] = [_dump_real(rs, s) for rs in s.realservers]
    if s.check is not None:
        d["check"] = _dump_check(s.check)
    return d


def _dump_real(rs: RealServerSpec, s: ServiceSpec) -> str | dict:
    """The shorthand string when only address and port matter, else a mapping."""
    default_port = s.port if s.fwmark is None else 0
    if rs.weight == 1 and rs.forwarding == s.forwarding and rs.name is None:
        return rs.address if rs.port == default_port else _hostport(rs.address, rs.port)
    d: dict = {"address": rs.address}
    if rs.port != default_port:
        d["port"] = rs.port
    if rs.weight != 1:
        d["weight"] = rs.weight
    if rs.forwarding != s.forwarding:
        d["forwarding"] = rs.forwarding
    if rs.name is not None:
        d["name"] = rs.name
    return d


def _dump_check(c: CheckSpec) -> dict:
    """Only the settings that differ from the defaults for this check type."""
    d: dict = {"type": c.type}
    implied_tls = TLS_MODES.get(c.type, ("none",))[0]
    for f in fields(CheckSpec):
        value = getattr(c, f.name)
        if f.name == "type" or value == (implied_tls if f.name == "tls" else f.default):
            continue
        d[f.name] = int(value) if isinstance(value, float) and value.is_integer() else value
    return d
