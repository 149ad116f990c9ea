"""An in-memory IPVSBackend that behaves like the kernel for the operations we use.

It refuses what the kernel refuses, with the kernel's errno: adding what exists
(EEXIST), editing or deleting what does not (ESRCH for a service, ENOENT for a
real server), an unknown scheduler (ENOENT), a mixed-family real server that is
not tunnelled (EAFNOSUPPORT). Every executed operation is recorded, so tests can
assert on exactly what reached the "kernel".

Sync daemons follow ip_vs_sync.c: one master and one backup at most (EEXIST for a
second), an unknown interface is ENODEV, a group that is not multicast EINVAL,
mixed-family real servers EINVAL (the sync protocol cannot carry them), stopping
a daemon that does not run ESRCH; a started daemon reports the kernel's defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import ipaddress
from collections.abc import Iterable, Sequence

from lvsmail.ipvs.model import (
    SYNC_DEFAULT_GROUP,
    SYNC_DEFAULT_PORT,
    SYNC_DEFAULT_TTL,
    SYNC_STATES,
    AddDest,
    AddService,
    DelDest,
    DelService,
    DestEntry,
    EditDest,
    EditService,
    IPVSError,
    Op,
    ServiceEntry,
    SyncDaemon,
    Table,
    Timeouts,
)
from lvsmail.spec import SCHEDULERS


class FakeIPVS:
    """IPVSBackend double: a table in memory, kernel errors included."""

    def __init__(self, table: Table | None = None, timeouts: Timeouts = Timeouts(900, 120, 300),
                 interfaces: Iterable[str] | None = None) -> None:
        self.table: Table = copy.deepcopy(table) if table else {}
        self.timeouts = timeouts
        #: Interfaces that exist (None: any name is accepted).
        self.interfaces = None if interfaces is None else set(interfaces)
        self.sync: dict[str, SyncDaemon] = {}  # state -> running daemon
        self.daemon_calls: list[str] = []  # "start master", "stop backup", ... in order
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

    async def daemons(self) -> list[SyncDaemon]:
        """The running daemons, master first, as the kernel's dump lists them."""
        return [self.sync[s] for s in SYNC_STATES if s in self.sync]

    async def start_daemon(self, daemon: SyncDaemon) -> None:
        """Start one daemon, refusing what start_sync_thread refuses."""
        err = self._daemon_error(daemon)
        if err:
            raise IPVSError(daemon, err)
        self.sync[daemon.state] = dataclasses.replace(
            daemon,
            group=daemon.group or SYNC_DEFAULT_GROUP,
            port=daemon.port or SYNC_DEFAULT_PORT,
            ttl=daemon.ttl or SYNC_DEFAULT_TTL,
            # MTU minus the IP and UDP headers, as start_sync_thread computes it
            maxlen=daemon.maxlen or 1500 - (48 if ":" in daemon.group else 28),
        )
        self.daemon_calls.append(f"start {daemon.state}")

    async def stop_daemon(self, state: str) -> None:
        """Stop one daemon; ESRCH when it does not run, EINVAL for an unknown state."""
        if state not in SYNC_STATES:
            raise IPVSError(state, errno.EINVAL)
        if state not in self.sync:
            raise IPVSError(state, errno.ESRCH)
        del self.sync[state]
        self.daemon_calls.append(f"stop {state}")

    def _daemon_error(self, d: SyncDaemon) -> int:
        if d.state not in SYNC_STATES:
            return errno.EINVAL
        if d.group and not ipaddress.ip_address(d.group).is_multicast:
            return errno.EINVAL
        if any(dest.settings.af and dest.settings.af != key.af for key, e in self.table.items()
               for dest in e.dests.values()):
            return errno.EINVAL
        if self.interfaces is not None and d.interface not in self.interfaces:
            return errno.ENODEV
        if d.state in self.sync:
            return errno.EEXIST
        return 0

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
