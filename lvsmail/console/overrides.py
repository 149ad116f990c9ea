"""Operator overrides of real-server weights: drain, enable, set a weight.

An override is the administrator's word on one real server of one service:
``drain`` (weight 0: no new connections, established ones and persistence
entries continue, as ``ipvsadm -e -w 0`` and ldirectord's quiescent do) or a
``weight``. It wins over the file's weight but not over health: a server that
is down stays out (or at weight 0 when the service is quiescent), and comes
back with the operator's weight once it is up again.

Overrides are kept in ``<state_dir>/<stem>.overrides.json``, so a director
that restarts (an upgrade, a crash) keeps a drain instead of sending new
mail to a server an administrator is taking down. ``enable`` removes them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from lvsmail.ipvs.model import Table
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import write_json

log = logging.getLogger("lvsmail.director.overrides")

Key = tuple[str, str, int]  # (service name, address, port), as the health engine names a server
MODES = ("drain", "weight")
MAX_WEIGHT = 65535  # the kernel's weight is a 32-bit int, ipvsadm and keepalived stop at 65535


@dataclass(frozen=True)
class Override:
    """One operator override: ``drain`` (weight 0) or ``weight``; ``since`` is a UNIX time."""

    service: str
    address: str
    port: int
    mode: str
    weight: int
    since: float

    @property
    def key(self) -> Key:
        """The server it applies to."""
        return (self.service, self.address, self.port)


class OverrideStore:
    """The overrides of one director, persisted in one JSON file replaced atomically on every change."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.items: dict[Key, Override] = {}

    def load(self) -> None:
        """Read the file; a missing one is empty, an unreadable one is logged and kept aside (not overwritten)."""
        try:
            data = json.loads(self.path.read_text())
            items = {}
            for d in data:
                o = Override(str(d["service"]), str(d["address"]), int(d["port"]), str(d["mode"]),
                             int(d["weight"]), float(d["since"]))
                if o.mode not in MODES:
                    raise ValueError(f"unknown mode {o.mode!r}")
                items[o.key] = o
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".bad")
            log.error("overrides: ignoring unreadable %s (%s); moved to %s", self.path, exc, aside)
            try:
                self.path.replace(aside)
            except OSError as move:
                log.error("overrides: cannot move %s aside: %s", self.path, move)
            return
        self.items = items
        if items:
            log.info("overrides: %d operator overrides restored from %s", len(items), self.path)

    def set(self, keys: list[Key], mode: str, weight: int, now: float | None = None) -> list[Override]:
        """Drain or weigh ``keys``; returns the new overrides. Saved before it returns."""
        if mode not in MODES:
            raise ValueError(f"unknown override {mode!r}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be 0..{MAX_WEIGHT}, got {weight}")
        now = time.time() if now is None else now
        new = dict(self.items)
        made = []
        for k in keys:
            old = new.get(k)
            o = Override(*k, mode=mode, weight=weight, since=old.since if old and old.mode == mode else now)
            new[k] = o
            made.append(o)
        self._commit(new)
        return made

    def clear(self, keys: list[Key]) -> list[Override]:
        """Remove the overrides of ``keys`` (``enable``); returns those that existed."""
        gone = [self.items[k] for k in keys if k in self.items]
        if gone:
            self._commit({k: o for k, o in self.items.items() if k not in keys})
        return gone

    def get(self, key: Key) -> Override | None:
        """The override of one server, if any."""
        return self.items.get(key)

    def _commit(self, items: dict[Key, Override]) -> None:
        """Write first, then take the new state: a failed write (OSError) changes nothing."""
        write_json(self.path, [asdict(o) for o in sorted(items.values(), key=lambda o: o.key)])
        self.items = items


def apply_overrides(table: Table, store: OverrideStore, spec: ClusterSpec, health: Mapping[Key, bool] | None) -> Table:
    """``table`` (desired, for ``spec``) with the operators' weights on servers that are up (rule: ``with_overrides``).

    ``health``: up or down per checked server (the health engine's ``health()``); None before it runs.
    """
    if not store.items:
        return table
    from lvsmail.ipvs.desired import service_key, with_overrides

    weights = {key: o.weight for key, o in store.items.items()}
    for svc in spec.services:
        entry = table.get(service_key(svc))
        if entry is not None:
            with_overrides(svc, entry, health or {}, weights)
    return table


def resolve(spec: ClusterSpec, target: str, service: str | None = None) -> list[Key]:
    """The real servers ``target`` names: an address, ``address:port`` (``[v6]:port``) or a name.

    ``service`` restricts the match to one service (by name). LookupError
    says what was not found; a fallback server is not a target (it is only
    used when every real server is down).
    """
    if service is not None and service not in {s.name for s in spec.services}:
        raise LookupError(f"no service named {service!r} (services: {', '.join(s.name for s in spec.services)})")
    address, port = _split(target)
    out = []
    for svc in spec.services:
        if service is not None and svc.name != service:
            continue
        for rs in svc.realservers:
            if address is not None:
                hit = rs.address == address and (port is None or rs.port == port)
            else:
                hit = rs.name == target
            if hit:
                out.append((svc.name, rs.address, rs.port))
    if not out:
        where = f" in service {service}" if service else ""
        raise LookupError(f"no real server {target}{where}")
    return out


def _split(target: str) -> tuple[str | None, int | None]:
    """(address, port) of an address or address:port; (None, None) for a name."""
    text = target.strip()
    for candidate, port in _forms(text):
        try:
            return str(ipaddress.ip_address(candidate)), port
        except ValueError:
            continue
    return None, None


def _forms(text: str):
    yield text, None  # a bare address (IPv6 ones contain ':')
    if text.startswith("[") and "]:" in text:
        host, _, port = text[1:].partition("]:")
        if port.isdigit():
            yield host, int(port)
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if port.isdigit():
            yield host, int(port)
