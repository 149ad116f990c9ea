"""An in-memory IPVSBackend that behaves like the kernel for the operations we use.

It refuses what the kernel refuses, with the kernel's errno: adding what exists
(EEXIST), editing or deleting what does not (ESRCH for a service, ENOENT for a
real server), an unknown scheduler (ENOENT), a mixed-family real server that is
not tunnelled (EAFNOSUPPORT). Every executed operation is recorded, so tests can
assert on exactly what reached the "kernel".
"""

from __future__ import annotations

import copy
import errno
from typing import Sequence

from lvsmail.ipvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DestEntry,
    EditDest,
    EditService,
    Op,
    ServiceEntry,
    Table,
    Timeouts,
)
from lvsmail.spec import SCHEDULERS


class FakeIPVS:
    """IPVSBackend double: a table in memory, kernel errors included."""

    def __init__(self, table: Table | None = None, timeouts: Timeouts = Timeouts(900, 120, 300)) -> None:
        self.table: Table = copy.deepcopy(table) if table else {}
        self.timeouts = timeouts
        self.executed: list[Op] = []
        self.dumps = 0
        self.fail_next: dict[int, int] = {}  # index in the next execute() → errno to inject

    async def dump(self, counters: bool = False) -> Table:
        """A deep copy, as a kernel dump is a snapshot."""
        self.dumps += 1
        return copy.deepcopy(self.table)

    async def execute(self, ops: Sequence[Op]) -> list[int]:
        """Apply each operation; record it; return errnos like the kernel."""
        inject, self.fail_next = self.fail_next, {}
        results = []
        for i, op in enumerate(ops):
            err = inject.get(i) or self._apply(op)
            if not err:
                self.executed.append(op)
            results.append(err)
        return results

    async def get_timeouts(self) -> Timeouts:
        """The stored timeouts."""
        return self.timeouts

    async def set_timeouts(self, timeouts: Timeouts) -> None:
        """Store non-zero fields, like the kernel."""
        self.timeouts = Timeouts(
            timeouts.tcp or self.timeouts.tcp,
            timeouts.tcpfin or self.timeouts.tcpfin,
            timeouts.udp or self.timeouts.udp,
        )

    async def close(self) -> None:
        """Nothing to release."""

    def _apply(self, op: Op) -> int:
        t = self.table
        match op:
            case AddService(key, settings):
                if key in t:
                    return errno.EEXIST
                if settings.scheduler not in SCHEDULERS:
                    return errno.ENOENT
                t[key] = ServiceEntry(settings=settings)
            case EditService(key, settings):
                if key not in t:
                    return errno.ESRCH
                if settings.scheduler not in SCHEDULERS:
                    return errno.ENOENT
                t[key].settings = settings
            case DelService(key):
                if key not in t:
                    return errno.ESRCH
                del t[key]
            case AddDest(svc, key, settings):
                if svc not in t:
                    return errno.ESRCH
                if key in t[svc].dests:
                    return errno.EEXIST
                if settings.af and settings.af != svc.af and settings.forwarding != "tun":
                    return errno.EAFNOSUPPORT
                t[svc].dests[key] = DestEntry(settings=settings)
            case EditDest(svc, key, settings):
                if svc not in t:
                    return errno.ESRCH
                if key not in t[svc].dests:
                    return errno.ENOENT
                t[svc].dests[key].settings = settings
            case DelDest(svc, key):
                if svc not in t:
                    return errno.ESRCH
                if key not in t[svc].dests:
                    return errno.ENOENT
                del t[svc].dests[key]
        return 0
