"""The reconciler: make the kernel's IPVS table match the desired table, and remember it.

It keeps what it last made true (``known``) so that a change decided by the
director itself — a weight after a health transition, a reload — is diffed
against memory and reaches the kernel as one request, without a dump. A
periodic ``sync(refresh=True)`` reads the kernel to catch drift made by
somebody else (``ipvsadm -C``, a second tool, a crashed peer).

Races are expected, not fatal: between reading and writing, another process may
add or remove the same entry. EEXIST on an add, or ENOENT/ESRCH on an edit or
delete, means the cache was stale; the reconciler re-reads the kernel and plans
again, a bounded number of times. Any other error is reported with the
operation that caused it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lvsmail.ipvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DestEntry,
    EditDest,
    EditService,
    IPVSBackend,
    IPVSError,
    Op,
    ServiceEntry,
    ServiceKey,
    Table,
    Timeouts,
    describe,
)
from lvsmail.ipvs.plan import plan

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


@dataclass
class SyncReport:
    """What one sync did."""

    applied: list[Op] = field(default_factory=list)
    attempts: int = 0
    dumped: bool = False
    timeouts_set: Timeouts | None = None

    @property
    def changed(self) -> bool:
        """True when the kernel was modified."""
        return bool(self.applied) or self.timeouts_set is not None


class ReconcileError(RuntimeError):
    """The kernel refused operations for a reason that is not a race."""

    def __init__(self, errors: list[IPVSError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def is_race(op: Op, err: int) -> bool:
    """True when the error only means someone else changed the table since we read it."""
    if isinstance(op, (AddService, AddDest)):
        return err == errno.EEXIST or (isinstance(op, AddDest) and err == errno.ESRCH)
    if isinstance(op, (EditService, EditDest, DelService, DelDest)):
        return err in (errno.ENOENT, errno.ESRCH)
    return False


class Reconciler:
    """Owns the services of one cluster file in one kernel (network namespace)."""

    def __init__(self, backend: IPVSBackend, owned: set[ServiceKey] | None = None) -> None:
        self.backend = backend
        self.owned: set[ServiceKey] = set(owned or ())
        self.known: Table | None = None  # what the kernel holds for owned services, as far as we know

    async def sync(
        self,
        desired: Table,
        timeouts: Timeouts | None = None,
        *,
        refresh: bool = False,
        only: set[ServiceKey] | None = None,
        full: Callable[[], Table] | None = None,
    ) -> SyncReport:
        """Apply the fewest operations to reach ``desired``; read the kernel first if ``refresh``.

        ``only`` limits the diff to the services a decision touched (a health
        transition changes one service), so its cost does not grow with the
        size of the table; the other services are neither read nor compared.
        ``desired`` may then hold just those services, and ``full`` builds the
        whole table for the cases that need it (a race, or nothing cached):
        a full sync of a scoped table would delete every other owned service.
        """
        if only is not None:
            if self.known is not None and not refresh:
                return await self._sync_only(desired, only, full)
            desired = full() if full is not None else desired
        return await self._sync_all(desired, timeouts, refresh)

    async def _sync_all(self, desired: Table, timeouts: Timeouts | None, refresh: bool,
                        report: SyncReport | None = None) -> SyncReport:
        """Make every owned service and every service of ``desired`` match ``desired``."""
        report = report if report is not None else SyncReport()
        scope = self.owned | set(desired)
        must_read = refresh or self.known is None
        while True:
            report.attempts += 1
            if must_read:
                actual = await self._read(scope)
                report.dumped = True
            else:
                actual = self.known
            if await self._attempt(plan(desired, actual, scope), report):
                break
            must_read = True
        self.known = _copy(desired)
        self.owned = set(desired)
        if timeouts is not None:
            current = await self.backend.get_timeouts()
            if timeouts_differ(current, timeouts):
                await self.backend.set_timeouts(timeouts)
                report.timeouts_set = timeouts
                log.info("ipvs: timeouts tcp %s tcpfin %s udp %s", timeouts.tcp, timeouts.tcpfin, timeouts.udp)
        return report

    async def _sync_only(self, desired: Table, only: set[ServiceKey], full: Callable[[], Table] | None) -> SyncReport:
        """Diff and apply just the services in ``only`` against the cache; fall back to a full sync on a race.

        The fallback is a full sync of ``full()`` (the whole table), called
        directly rather than through ``self.sync``, so it is one sync to
        whoever wraps that attribute.
        """
        report = SyncReport()
        want = {k: desired[k] for k in only if k in desired}
        have = {k: self.known[k] for k in only if k in self.known}
        report.attempts = 1
        if not await self._attempt(plan(want, have, only), report, raise_on_race=False):
            log.info("ipvs: table changed under us; re-reading")
            whole = await self._sync_all(full() if full is not None else desired, None, True)
            whole.applied[:0] = report.applied
            return whole
        for k in only:
            if k in want:
                self.known[k] = _copy({k: want[k]})[k]
                self.owned.add(k)
            else:
                self.known.pop(k, None)
                self.owned.discard(k)
        return report

    async def _attempt(self, ops: list[Op], report: SyncReport, *, raise_on_race: bool = True) -> bool:
        """Execute one plan; True when everything applied, False on a race worth a re-read."""
        if not ops:
            return True
        results = await self.backend.execute(ops)
        failed = [(op, err) for op, err in zip(ops, results) if err]
        for op, err in zip(ops, results):
            if not err:
                report.applied.append(op)
                log.info("ipvs: %s", describe(op))
        if not failed:
            return True
        real = [IPVSError(op, err) for op, err in failed if not is_race(op, err)]
        if real or (raise_on_race and report.attempts >= MAX_ATTEMPTS):
            self.known = None  # the kernel is in an unknown state now: read it next time
            raise ReconcileError(real or [IPVSError(op, err) for op, err in failed])
        log.info("ipvs: table changed under us (%s)", describe(failed[0][0]))
        return False

    async def release(self) -> list[Op]:
        """Delete every owned service (``--flush-on-exit``); other services stay."""
        actual = await self._read(self.owned)
        ops = plan({}, actual, self.owned)
        results = await self.backend.execute(ops)
        errors = [IPVSError(op, err) for op, err in zip(ops, results) if err and not is_race(op, err)]
        if errors:
            raise ReconcileError(errors)
        self.owned, self.known = set(), {}
        return ops

    async def _read(self, scope: set[ServiceKey]) -> Table:
        table = await self.backend.dump()
        return {k: v for k, v in table.items() if k in scope}


def timeouts_differ(current: Timeouts, wanted: Timeouts) -> bool:
    """True when a timeout the file sets (non-zero) is not the kernel's: the one test of both sync and plan."""
    return any(w and w != c for w, c in zip((wanted.tcp, wanted.tcpfin, wanted.udp),
                                            (current.tcp, current.tcpfin, current.udp)))


def _copy(table: Table) -> Table:
    """A structural copy that shares the immutable settings objects (cheap at 16,000 entries)."""
    return {
        k: ServiceEntry(settings=v.settings, dests={dk: DestEntry(settings=d.settings) for dk, d in v.dests.items()})
        for k, v in table.items()
    }
