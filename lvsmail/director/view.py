"""LiveView: the operator surface's view of a running director (lvsmail.console.view.DirectorView).

The composition root builds it from the director's parts, each passed
explicitly: the state directory, the spec as callables (a reload replaces
it), the membership, the health engine, the kernel's table behind the
director's kernel lock, and what the operator may ask for (apply, reload).
It never holds the Director, so the operator surface cannot reach past it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from lvsmail.director import kernel_profile as profile
from lvsmail.health.engine import HealthEngine, Key
from lvsmail.health.result import Result
from lvsmail.health.state import HealthState
from lvsmail.ipvs.model import SyncDaemon, Table, Timeouts
from lvsmail.net.sysctl import SysctlBackend
from lvsmail.registration.director import Membership
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import StateDir


class LiveView:
    """A running director as the operator surface may see it, from explicit parts (never the Director)."""

    def __init__(self, *, state: StateDir, config_path: str | Path, overrides,
                 spec: Callable[[], ClusterSpec], effective: Callable[[], ClusterSpec],
                 membership: Membership, engine: HealthEngine,
                 table: Callable[[bool], Awaitable[Table]], timeouts: Callable[[], Awaitable[Timeouts]],
                 daemons: Callable[[], Awaitable[list[SyncDaemon]]], apply: Callable[[str], Awaitable[None]],
                 failover: Callable[[], dict | None], sync_role: Callable[[], Any],
                 sysctl: SysctlBackend, request_reload: Callable[[], None]) -> None:
        self.state = state
        self.config_path = config_path
        self.overrides = overrides
        self._spec, self._effective = spec, effective
        self._membership, self._engine = membership, engine
        self._table, self._timeouts, self._daemons, self._apply = table, timeouts, daemons, apply
        self._failover, self._sync_role = failover, sync_role
        self._sysctl, self._reload = sysctl, request_reload

    def spec(self) -> ClusterSpec:
        """The cluster file as last loaded."""
        return self._spec()

    def effective(self) -> ClusterSpec:
        """The file's spec with the joined members."""
        return self._effective()

    def clock(self) -> float:
        """The health engine's clock."""
        return self._engine.clock()

    def health(self) -> Mapping[Key, HealthState]:
        """The health engine's states."""
        return self._engine.states

    def joined(self) -> list[dict]:
        """The joined members, as published for the file's spec."""
        return self._membership.published(self._spec())

    def failover(self) -> dict | None:
        """The VRRP instances with their peers; None without ``failover:``."""
        return self._failover()

    def sync_role(self) -> dict | None:
        """The sync daemon role's status; None without ``sync:``."""
        role = self._sync_role()
        return role.status() if role is not None else None

    def kernel_profile(self) -> tuple[dict, list[Any]]:
        """The sysctls the file wants, and every profile key's report row."""
        want = profile.wanted(self._spec())
        return want, profile.report(self._sysctl, want)

    async def table(self, counters: bool = True) -> Table:
        """One dump of the kernel's table."""
        return await self._table(counters)

    async def timeouts(self) -> Timeouts:
        """The kernel's connection timeouts."""
        return await self._timeouts()

    async def daemons(self) -> list[SyncDaemon]:
        """The kernel's sync daemons."""
        return await self._daemons()

    async def recheck(self, key: Key) -> tuple[Result, HealthState]:
        """One check of ``key`` now, through the engine; KeyError when it has no check."""
        return await self._engine.check_now(key)

    async def apply(self, why: str) -> None:
        """Program the desired table now, without re-reading the kernel."""
        await self._apply(why)

    def request_reload(self) -> None:
        """Ask for a reload of the file."""
        self._reload()

