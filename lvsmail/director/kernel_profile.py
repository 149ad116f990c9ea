"""The director's kernel profile: the IPVS sysctls a director pair needs, set and reported.

No LVS tool manages these, yet each decides what happens to mail sessions when
something changes:

* ``net.ipv4.vs.expire_nodest_conn`` — when a real server is removed (a failed
  health check), its connections are reset at their next packet instead of being
  silently dropped until they time out, so clients reconnect at once;
* ``net.ipv4.vs.expire_quiescent_template`` — persistence templates pointing at a
  quiescent (weight 0) real server expire, so persistent clients move on;
* ``net.ipv4.vs.conn_reuse_mode`` — how a new connection that reuses the
  address and port of an old one is scheduled; left to the kernel (1) unless set;
* ``net.ipv4.vs.backup_only`` — a director that only ever runs the backup sync
  daemon does not schedule connections itself (no DR/TUN forwarding loops);
* ``net.ipv4.ip_forward`` — LVS-NAT routes the real servers' replies back.

Only the keys the profile manages are written, each change is logged with the
old value, and the report marks every value that differs from the profile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lvsmail.ipvs.model import IPVSBackend
from lvsmail.net.sysctl import SysctlBackend, SysctlError
from lvsmail.spec import ClusterSpec, KernelProfileSpec

log = logging.getLogger("lvsmail.director")

#: Profile key -> sysctl key, in the order status shows them.
SYSCTLS = {
    "expire_nodest_conn": "net.ipv4.vs.expire_nodest_conn",
    "expire_quiescent_template": "net.ipv4.vs.expire_quiescent_template",
    "conn_reuse_mode": "net.ipv4.vs.conn_reuse_mode",
    "backup_only": "net.ipv4.vs.backup_only",
    "ip_forward": "net.ipv4.ip_forward",
}


@dataclass(frozen=True)
class SysctlChange:
    """One write the profile made (or tried): key, old value, new value, and the error if it failed."""

    key: str
    old: str | None
    new: str
    error: str | None = None


@dataclass(frozen=True)
class SysctlRow:
    """One line of the report: the value now, the profile's value (None: not managed) and whether they agree."""

    name: str
    key: str
    value: str | None  # None: the key does not exist (ip_vs not loaded)
    wanted: int | None

    @property
    def ok(self) -> bool:
        """True when the key is not managed or holds the profile's value."""
        return self.wanted is None or self.value == str(self.wanted)

    def as_json(self) -> dict:
        """Plain data for ``status --json``."""
        return {"name": self.name, "key": self.key, "value": self.value, "wanted": self.wanted, "ok": self.ok}


def wanted(spec: ClusterSpec) -> dict[str, int]:
    """Profile key -> value for every key this cluster file manages (empty without a ``kernel:`` section)."""
    profile: KernelProfileSpec | None = getattr(spec, "kernel", None)
    if profile is None:
        return {}
    out: dict[str, int] = {}
    for name in SYSCTLS:
        value = getattr(profile, name)
        if value == "auto":
            value = _auto(spec, name)
        if value is not None:
            out[name] = int(value)
    return out


def _auto(spec: ClusterSpec, name: str) -> int | None:
    """The derived value of an ``auto`` key, or None when the file gives no reason to manage it."""
    if name == "ip_forward":
        nat = any(s.forwarding == "nat" or any(rs.forwarding == "nat" for rs in s.realservers)
                  for s in spec.services)
        return 1 if nat else None
    if name == "backup_only":
        sync = getattr(spec, "sync", None)
        return 1 if sync is not None and sync.role == "backup" else None
    raise KeyError(name)


def apply(spec: ClusterSpec, sysctl: SysctlBackend) -> list[SysctlChange]:
    """Write the managed keys that differ; log and return each change (failures included, never raised).

    A failure is reported rather than fatal: the director still keeps the IPVS
    table right, and ``lvsmail director status`` flags the value.
    """
    changes = []
    for name, value in wanted(spec).items():
        key, new = SYSCTLS[name], str(value)
        try:
            old = sysctl.read(key)
        except SysctlError as exc:
            log.error("director: kernel profile: cannot read %s: %s", key, exc)
            changes.append(SysctlChange(key, None, new, str(exc)))
            continue
        if old == new:
            continue
        try:
            sysctl.write(key, new)
        except SysctlError as exc:
            log.error("director: kernel profile: cannot set %s=%s (is %s): %s", key, new, old, exc)
            changes.append(SysctlChange(key, old, new, str(exc)))
            continue
        log.info("director: kernel profile: %s %s -> %s", key, old, new)
        changes.append(SysctlChange(key, old, new))
    return changes


async def apply_for(spec: ClusterSpec, backend: IPVSBackend, sysctl: SysctlBackend) -> list[SysctlChange]:
    """``apply`` on a running director: the IPVS backend is opened first when the file manages any key.

    Opening the backend loads ip_vs, which creates the ``net.ipv4.vs.*`` keys
    the profile writes; without a ``kernel:`` section nothing is touched.
    """
    if not wanted(spec):
        return []
    await backend.get_timeouts()
    return apply(spec, sysctl)


def report(sysctl: SysctlBackend, want: dict[str, int]) -> list[SysctlRow]:
    """Every profile key with its current value and, where managed, the value it should have."""
    rows = []
    for name, key in SYSCTLS.items():
        try:
            value = sysctl.read(key)
        except SysctlError:
            value = None
        rows.append(SysctlRow(name, key, value, want.get(name)))
    return rows
