"""What the operator surface may know of a running director, and nothing more.

The local API, the status snapshot and the metrics exporter read a director
only through this view. The daemon builds one from its members (its
``LiveView``); the tests build a ``FakeView`` (lvsmail.console.fake) from plain
data, so the operator surface is tested without a director, and a change
inside the director cannot reach the operator surface unless it changes this
interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from lvsmail.console.overrides import OverrideStore
from lvsmail.health.result import Result
from lvsmail.health.state import HealthState
from lvsmail.ipvs.model import SyncDaemon, Table, Timeouts
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import StateDir

Key = tuple[str, str, int]  # (service name, address, port), as the health engine names a real server


class DirectorView(Protocol):
    """What the operator surface may know of a running director."""

    #: The director's state files (its socket, its outages record...).
    state: StateDir
    #: The cluster file the director runs.
    config_path: Path
    #: The operators' drain and weight overrides (the API changes them, the snapshot shows them).
    overrides: OverrideStore

    def spec(self) -> ClusterSpec:
        """The cluster file as last loaded (replaced by a good reload)."""

    def effective(self) -> ClusterSpec:
        """The file's spec with the real servers that joined through the registration API."""

    def clock(self) -> float:
        """The health engine's clock (monotonic seconds): the time base of ``health()``'s ``since``."""

    def health(self) -> Mapping[Key, HealthState]:
        """Each checked real server's health state."""

    def joined(self) -> list[dict]:
        """The joined members as the director publishes them (with their service, address, port)."""

    def failover(self) -> dict | None:
        """The VRRP instances' status with each one's ``peer``; None without a ``failover:`` section."""

    def sync_role(self) -> dict | None:
        """The IPVS sync daemon role's status; None without a ``sync:`` section."""

    def kernel_profile(self) -> tuple[dict, list[Any]]:
        """The sysctls the file wants, and the report rows (``.ok``, ``.as_json()``) of every profile key."""

    async def table(self, counters: bool = True) -> Table:
        """One dump of the kernel's IPVS table (taking the director's turn on its netlink socket)."""

    async def timeouts(self) -> Timeouts:
        """The kernel's IPVS connection timeouts."""

    async def daemons(self) -> list[SyncDaemon]:
        """The kernel's running sync daemons (raises when the kernel cannot say)."""

    async def recheck(self, key: Key) -> tuple[Result, HealthState]:
        """Check one real server now; the verdict counts like a scheduled one. KeyError: it has no check."""

    async def apply(self, why: str) -> None:
        """Bring the kernel's table to the desired one now (after an override), without re-reading the kernel."""

    def request_reload(self) -> None:
        """Ask the director to re-read its file (as SIGHUP does)."""
