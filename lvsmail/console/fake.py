"""FakeView: a director as the operator surface sees it, made of plain data, for tests.

Each answer of the view (lvsmail.console.view.DirectorView) is one field;
the kernel's table is a FakeIPVS's, so counters, timeouts and sync daemons
are what the test put there. What the operator surface asks the director
to do is recorded: ``applied`` (the reasons given to ``apply``) and
``reloads`` (how many reloads were requested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvsmail.console.overrides import OverrideStore
from lvsmail.console.view import Key
from lvsmail.health.result import Result
from lvsmail.health.state import HealthState
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import SyncDaemon, Table, Timeouts
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import StateDir


@dataclass
class FakeView:
    """A DirectorView with one field per answer; ``applied`` and ``reloads`` record what it was asked to do."""

    state: StateDir
    config_path: Path
    cluster: ClusterSpec  # spec()
    merged: ClusterSpec | None = None  # effective(); the file's spec when None
    kernel: FakeIPVS = field(default_factory=FakeIPVS)  # table(), timeouts(), daemons()
    overrides: OverrideStore | None = None  # the state directory's store when None
    states: dict[Key, HealthState] = field(default_factory=dict)  # health()
    now: float = 0.0  # clock()
    members: list[dict] = field(default_factory=list)  # joined()
    failover_status: dict | None = None  # failover()
    sync_status: dict | None = None  # sync_role()
    profile: tuple[dict, list[Any]] = ({}, [])  # kernel_profile()
    results: dict[Key, Result] = field(default_factory=dict)  # recheck(): the answer per server
    applied: list[str] = field(default_factory=list)  # apply(why): each why, in order
    reloads: int = 0  # request_reload() calls

    def __post_init__(self) -> None:
        """Default the override store to the state directory's file, as the director does."""
        if self.overrides is None:
            self.overrides = OverrideStore(self.state.overrides)

    def spec(self) -> ClusterSpec:
        """The ``cluster`` field."""
        return self.cluster

    def effective(self) -> ClusterSpec:
        """The ``merged`` field, or the file's spec."""
        return self.merged if self.merged is not None else self.cluster

    def clock(self) -> float:
        """The ``now`` field."""
        return self.now

    def health(self) -> dict[Key, HealthState]:
        """The ``states`` field."""
        return self.states

    def joined(self) -> list[dict]:
        """The ``members`` field."""
        return self.members

    def failover(self) -> dict | None:
        """The ``failover_status`` field."""
        return self.failover_status

    def sync_role(self) -> dict | None:
        """The ``sync_status`` field."""
        return self.sync_status

    def kernel_profile(self) -> tuple[dict, list[Any]]:
        """The ``profile`` field."""
        return self.profile

    async def table(self, counters: bool = True) -> Table:
        """The FakeIPVS's table (a copy)."""
        return await self.kernel.dump(counters=counters)

    async def timeouts(self) -> Timeouts:
        """The FakeIPVS's timeouts."""
        return await self.kernel.get_timeouts()

    async def daemons(self) -> list[SyncDaemon]:
        """The FakeIPVS's sync daemons."""
        return await self.kernel.daemons()

    async def recheck(self, key: Key) -> tuple[Result, HealthState]:
        """The scripted result and the server's state; KeyError when the test gave no result."""
        return self.results[key], self.states[key]

    async def apply(self, why: str) -> None:
        """Record ``why`` in ``applied``."""
        self.applied.append(why)

    def request_reload(self) -> None:
        """Count one reload request."""
        self.reloads += 1
