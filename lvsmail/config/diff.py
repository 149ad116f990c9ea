"""What would change between two cluster files.

The answer is semantic: services, real servers and check settings added,
removed or changed, matched by service name (or, for a renamed service, by its
kernel identity) and by real server address and port, so reordering or
reformatting a file is no change. (A file against the running kernel is the
director's own plan: ``lvsmail.director.table.kernel_plan``.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from lvsmail.spec import CheckSpec, ClusterSpec, RealServerSpec, ServiceSpec

# -- file against file -------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One semantic difference: ``+`` added, ``-`` removed, ``~`` changed, with what and where."""

    sign: str
    what: str  # "service smtp", "real server 198.51.100.20:25 of smtp", "check of http", "vips", ...
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.sign} {self.what}" + (f": {self.detail}" if self.detail else "")


#: Service fields compared directly (real servers, fallback and check are compared in detail).
_SERVICE_FIELDS = ("vip", "protocol", "port", "fwmark", "family", "scheduler", "persistent", "netmask",
                   "forwarding", "quiescent")
_TOP_FIELDS = ("name", "maintenance_dir", "timeouts", "alerts")


def diff_specs(old: ClusterSpec, new: ClusterSpec) -> list[Change]:
    """Every difference from ``old`` to ``new`` that changes what the cluster does."""
    changes: list[Change] = []
    for key in _TOP_FIELDS:
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            changes.append(_field_change(key if key != "name" else "cluster", a, b))
    for vip in new.vips:
        if vip not in old.vips:
            changes.append(Change("+", "vip", vip))
    for vip in old.vips:
        if vip not in new.vips:
            changes.append(Change("-", "vip", vip))
    changes += _services(old.services, new.services)
    skip = {"name", "vips", "services", "source", *_TOP_FIELDS}
    for f in fields(ClusterSpec):
        if f.name in skip:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if a is None:
            changes.append(Change("+", f"section {f.name}"))
        elif b is None:
            changes.append(Change("-", f"section {f.name}"))
        else:
            changes.append(Change("~", f"section {f.name}", _dataclass_delta(a, b)))
    return changes


def _services(old: tuple[ServiceSpec, ...], new: tuple[ServiceSpec, ...]) -> list[Change]:
    """Services matched by name, then by kernel identity (a rename), then added/removed."""
    changes: list[Change] = []
    old_by_name = {s.name: s for s in old}
    new_by_name = {s.name: s for s in new}
    pairs = [(old_by_name[n], new_by_name[n]) for n in new_by_name if n in old_by_name]
    gone = [s for s in old if s.name not in new_by_name]
    added = [s for s in new if s.name not in old_by_name]
    for s in list(added):
        match = next((o for o in gone if _identity(o) == _identity(s)), None)
        if match is not None:
            gone.remove(match)
            added.remove(s)
            changes.append(Change("~", f"service {match.name}", f"renamed to {s.name}"))
            pairs.append((match, s))
    for s in added:
        changes.append(Change("+", f"service {s.name}", f"{s.label}, {len(s.realservers)} real servers"))
    for s in gone:
        changes.append(Change("-", f"service {s.name}", s.label))
    for a, b in pairs:
        changes += _service(a, b)
    return changes


def _service(a: ServiceSpec, b: ServiceSpec) -> list[Change]:
    """Differences inside one service: its settings, fallback, real servers and check."""
    changes: list[Change] = []
    deltas = [f"{k} {_show(getattr(a, k))} -> {_show(getattr(b, k))}" for k in _SERVICE_FIELDS
              if getattr(a, k) != getattr(b, k)]
    if deltas:
        changes.append(Change("~", f"service {b.name}", ", ".join(deltas)))
    if a.fallback != b.fallback:
        if a.fallback is None:
            changes.append(Change("+", f"fallback of {b.name}", _real_text(b.fallback)))
        elif b.fallback is None:
            changes.append(Change("-", f"fallback of {b.name}", _real_text(a.fallback)))
        else:
            changes.append(Change("~", f"fallback of {b.name}", _dataclass_delta(a.fallback, b.fallback)))
    old_reals = {(r.address, r.port): r for r in a.realservers}
    new_reals = {(r.address, r.port): r for r in b.realservers}
    for key, r in new_reals.items():
        if key not in old_reals:
            changes.append(Change("+", f"real server {_hostport(*key)} of {b.name}", _real_text(r)))
        elif old_reals[key] != r:
            changes.append(Change("~", f"real server {_hostport(*key)} of {b.name}",
                                  _dataclass_delta(old_reals[key], r)))
    for key, r in old_reals.items():
        if key not in new_reals:
            changes.append(Change("-", f"real server {_hostport(*key)} of {b.name}", _real_text(r)))
    if a.check != b.check:
        if a.check is None:
            changes.append(Change("+", f"check of {b.name}", _check_text(b.check)))
        elif b.check is None:
            changes.append(Change("-", f"check of {b.name}", _check_text(a.check)))
        else:
            changes.append(Change("~", f"check of {b.name}", _dataclass_delta(a.check, b.check)))
    return changes


def _identity(s: ServiceSpec) -> tuple:
    return (s.family, s.fwmark) if s.fwmark is not None else (s.family, s.protocol, s.vip, s.port)


def _field_change(key: str, a, b) -> Change:
    if a is None:
        return Change("+", key, _show(b))
    if b is None:
        return Change("-", key, _show(a))
    if dataclasses.is_dataclass(a):
        return Change("~", key, _dataclass_delta(a, b))
    return Change("~", key, f"{_show(a)} -> {_show(b)}")


def _dataclass_delta(a, b) -> str:
    """``weight 1 -> 0, forwarding tun -> dr``: only the fields that differ."""
    parts = [f"{f.name} {_show(getattr(a, f.name))} -> {_show(getattr(b, f.name))}"
             for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    return ", ".join(parts)


def _real_text(r: RealServerSpec) -> str:
    return f"weight {r.weight}, {r.forwarding}" + (f", name {r.name}" if r.name else "")


def _check_text(c: CheckSpec) -> str:
    return f"{c.type} every {_show(c.interval)} s, timeout {_show(c.timeout)} s"


def _show(value) -> str:
    """A value as an operator reads it: 2.0 -> 2, None -> none, tuples comma-joined."""
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        return "{" + ", ".join(f"{f.name} {_show(getattr(value, f.name))}" for f in fields(value)) + "}"
    return str(value)


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
