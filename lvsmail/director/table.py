"""The kernel table: the reconciler, the one kernel lock, and the batching of health transitions.

Everything that reads or writes the director's IPVS table goes through one
``KernelTable``, so a repair, a reload, an operator's drain and a health
verdict never interleave their netlink exchanges. The desired table is a pure
function of the spec, the health verdicts and the operators' weights
(``lvsmail.ipvs.desired``), built service by service: a health transition
builds and diffs only its own service.

``kernel_plan`` is the one plan against the kernel, shown by both
``director apply --dry-run`` and ``config check``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lvsmail.director.reconcile import ReconcileError, Reconciler, SyncReport, timeouts_differ
from lvsmail.ipvs.desired import Health, Key, Weights, desired_table, desired_timeouts, service_key
from lvsmail.ipvs.model import IPVSBackend, Op, ServiceKey, Table, Timeouts, describe
from lvsmail.ipvs.plan import plan
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import StateDir

if TYPE_CHECKING:  # the health engine is not needed to plan (``config check`` imports this module)
    from lvsmail.health.engine import Target
    from lvsmail.health.state import TransitionEvent

log = logging.getLogger("lvsmail.director")


@dataclass(frozen=True)
class DesiredSource:
    """Where the desired table comes from, read at each sync."""

    spec: Callable[[], ClusterSpec]  # the effective spec: the file's plus the joined members
    health: Callable[[], Health | None]  # None: nothing checked yet, every real server counts as up
    overrides: Callable[[], Weights]  # the operators' weights (drain, weight)


def _ignore(*_args, **_kw) -> None:
    """A hook nobody listens to."""


@dataclass(frozen=True)
class TableHooks:
    """What the kernel table tells the rest of the director, as callables (it knows nothing of the daemon)."""

    publish: Callable[..., object] = _ignore  # EventHub.publish(kind, text, **fields): "health", "kernel"
    save_owned: Callable[[set[ServiceKey]], None] = _ignore  # after each full sync
    on_removed: Callable[[str, float], None] = _ignore  # a real server taken out: (what, seconds since it failed)
    on_batch: Callable[[set[str]], None] = _ignore  # names of the services a transition batch changed
    alert: Callable[[Key, bool, str], None] = _ignore  # a transition of a service still in the file
    clock: Callable[[], float] = lambda: 0.0  # the health engine's clock (transitions' streaks began on it)


class KernelTable:
    """The reconciler, the one kernel lock, and the batching of health transitions."""

    #: Transitions decided within this many seconds of the last kernel update wait and share the next one.
    TRANSITION_BATCH = 0.05

    def __init__(self, backend: IPVSBackend, source: DesiredSource, hooks: TableHooks = TableHooks(), *,
                 owned: AbstractSet[ServiceKey] = frozenset()) -> None:
        self.backend = backend
        self.source = source
        self.hooks = hooks
        self.reconciler = Reconciler(backend, owned=set(owned))
        self.lock = asyncio.Lock()  # one netlink dialogue at a time: syncs, batches, dumps
        # Health transitions waiting for the next kernel update: service -> words for the log, the names
        # of those services, and the real servers taken out with the time their failing streak began.
        self._batch: dict[ServiceKey, list[str]] = {}
        self._names: set[str] = set()
        self._removed: list[tuple[str, float]] = []
        self._task: asyncio.Task | None = None
        self._last: float | None = None

    @property
    def owned(self) -> frozenset[ServiceKey]:
        """The services this director created in the kernel (and so may change or delete)."""
        return frozenset(self.reconciler.owned)

    def desired(self, only: AbstractSet[ServiceKey] | None = None) -> Table:
        """The table the source asks for now; ``only``: just those services' entries."""
        return desired_table(self.source.spec(), self.source.health(), self.source.overrides(), only=only)

    async def sync(self, why: str, only: AbstractSet[ServiceKey] | None = None, *,
                   refresh: bool = True) -> SyncReport | None:
        """Make the kernel match the desired table (``only``: those services); None when the kernel refused.

        ``only`` builds and diffs just those services against the cache, so
        it needs ``refresh=False``: a refresh reads the kernel and syncs the
        whole table. A refusal is logged, not raised: the next repair period
        retries, and an operator sees why.
        """
        scope = set(only) if only is not None else None
        try:
            async with self.lock:
                report = await self.reconciler.sync(self.desired(scope), desired_timeouts(self.source.spec()),
                                                    refresh=refresh, only=scope, full=self.desired)
        except ReconcileError as exc:
            log.error("director: %s: kernel refused: %s", why, exc)
            return None
        if report.applied and why == "repair":
            log.warning("director: repaired drift with %d operations", len(report.applied))
        self._published(report)
        self.hooks.save_owned(set(self.reconciler.owned))
        return report

    def transition(self, target: Target, event: TransitionEvent) -> None:
        """A real server went up or down: its service joins the next kernel update, which starts at once.

        Synchronous (it runs inside the health engine's callback): it neither
        awaits nor raises, and transitions decided in the same pass of the
        event loop share one update.
        """
        self.hooks.publish("health", f"{target.service} {target.address}:{target.port} {event.word}: {event.reason}",
                           service=target.service, address=target.address, port=target.port, up=event.up,
                           reason=event.reason)
        svc = next((s for s in self.source.spec().services if s.name == target.service), None)
        if svc is None:  # removed by a reload while the check was running
            return
        self.hooks.alert(target.key, event.up, event.reason)
        if not event.up:
            self._removed.append((f"{target.address}:{target.port} {event.reason}", event.streak_began))
        self._batch.setdefault(service_key(svc), []).append(f"{event.word} {target.address}:{target.port}")
        self._names.add(svc.name)
        task = self._task
        if task is None or task.done():
            self._task = asyncio.get_running_loop().create_task(self._apply_transitions(), name="health transitions")

    async def _apply_transitions(self) -> None:
        """Apply pending health transitions: one scoped kernel update per batch, at most one per TRANSITION_BATCH.

        The first transition after a quiet spell is applied at once (after one
        pass of the loop, so transitions decided together share it); those
        decided while an update runs or within TRANSITION_BATCH seconds of its
        start wait for the next. A flapping or mass failure then costs a few
        updates a second instead of one desired-table build and netlink
        exchange per server.
        """
        loop = asyncio.get_running_loop()
        while self._batch:
            last = self._last
            await asyncio.sleep(0.0 if last is None else max(0.0, last + self.TRANSITION_BATCH - loop.time()))
            batch, self._batch = self._batch, {}
            names, self._names = self._names, set()
            removed, self._removed = self._removed, []
            self._last = loop.time()
            only = set(batch)
            async with self.lock:
                try:
                    report = await self.reconciler.sync(self.desired(only), only=only, full=self.desired)
                except ReconcileError as exc:
                    changes = "; ".join(w for words in batch.values() for w in words)
                    log.error("director: health changes (%s): kernel refused: %s", changes, exc)
                else:
                    self._published(report)
                    done = self.hooks.clock()
                    for what, began in removed:
                        self.hooks.on_removed(what, done - began)
            self.hooks.on_batch(names)

    async def settled(self) -> None:
        """Return once no health transition waits for the kernel (every batch applied)."""
        while (task := self._task) is not None and not task.done():
            await task

    async def pending(self) -> KernelPlan:
        """What a refresh would change now, health and weights included, without applying it."""
        async with self.lock:
            return await kernel_plan(self.backend, self.source.spec(), self.reconciler.owned, desired=self.desired())

    async def dump(self, counters: bool = False) -> Table:
        """The kernel's whole table (``counters``: with connection and traffic counters)."""
        async with self.lock:
            return await self.backend.dump(counters=counters)

    async def timeouts(self) -> Timeouts:
        """The kernel's connection timeouts."""
        async with self.lock:
            return await self.backend.get_timeouts()

    async def daemons(self) -> list:
        """The kernel's connection-sync daemons."""
        async with self.lock:
            return await self.backend.daemons()

    async def release(self) -> list[Op]:
        """Delete every owned service (``--flush-on-exit``) and record that none is owned; other services stay."""
        async with self.lock:
            ops = await self.reconciler.release()
        self.hooks.save_owned(set())
        return ops

    def _published(self, report: SyncReport) -> None:
        for op in report.applied:
            self.hooks.publish("kernel", describe(op))


# -- the one plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelPlan:
    """The operations that would make the kernel match a file, and the timeouts it would set."""

    ops: tuple[Op, ...]
    timeouts: Timeouts | None = None  # None: the kernel's timeouts already match (or the file leaves them)
    owned: frozenset[ServiceKey] = frozenset()

    @property
    def in_sync(self) -> bool:
        """True when applying the file would change nothing."""
        return not self.ops and self.timeouts is None

    def lines(self) -> list[str]:
        """One line per operation, as ``director apply --dry-run`` and ``config check`` print them."""
        out = [describe(op) for op in self.ops]
        if self.timeouts is not None:
            t = self.timeouts
            out.append(f"set timeouts tcp {t.tcp or '-'} tcpfin {t.tcpfin or '-'} udp {t.udp or '-'}")
        return out


async def kernel_plan(backend: IPVSBackend, spec: ClusterSpec, owned: AbstractSet[ServiceKey] = frozenset(), *,
                      desired: Table | None = None) -> KernelPlan:
    """Read the kernel and plan, without applying anything: the same ``plan`` the reconciler applies.

    ``owned`` are services a director of this file created earlier; one that
    the file no longer lists shows up as a deletion, as it would on reload.
    ``desired`` defaults to the file's table with every real server up.
    """
    desired = desired_table(spec) if desired is None else desired
    scope = set(owned) | set(desired)
    table = await backend.dump()
    actual = {k: v for k, v in table.items() if k in scope}
    ops = plan(desired, actual, scope)
    wanted = desired_timeouts(spec)
    timeouts = None
    if wanted is not None and timeouts_differ(await backend.get_timeouts(), wanted):
        timeouts = wanted
    return KernelPlan(tuple(ops), timeouts, frozenset(owned))


def load_owned(state: StateDir) -> tuple[set[ServiceKey], str | None]:
    """Services a director of this file recorded as its own, and a warning if the record is unreadable."""
    path = state.owned
    try:
        data = json.loads(path.read_text())
        return {ServiceKey(**item) for item in data}, None
    except FileNotFoundError:
        return set(), None
    except (OSError, ValueError, TypeError) as exc:
        return set(), f"{path}: ignoring unreadable ownership record ({exc})"
