"""The health engine: when to check which real server, and what to do with the verdicts.

Checkers only check and the state machine only decides; this module owns time.
Each real server of each checked service has a place in one schedule, kept on
the check driver (``lvsmail.health.driver``: the checks' sockets and timers
without an asyncio task per check, which is most of a check's cost at a
thousand servers):

* its first check waits a random fraction of the interval (warm-up jitter), so
  a thousand servers are spread over the interval instead of probed at once;
* later checks start at a fixed rate (start + interval), not interval after
  the previous one ended, so a slow server does not drift its own schedule;
* at most ``concurrency`` checks are in flight (the others wait their turn
  in order), and a hung server only holds its own check until its timeout;
* a check still waiting when the next one is due gets a fresh check beside it
  (one at most, and only while there is room under ``concurrency``): the first
  conclusive answer of the two is the verdict and the other is cancelled, so
  rise/fall count one answer per round. A server that resumes after hanging
  is then seen within an interval, not after the hung check's timeout (a SYN
  to a stopped server is retransmitted after 1 s and 3 s);
* while a transition is pending the next check comes sooner (``next_interval``);
* a check that timed out while the server's answer sat unread in our socket
  is inconclusive, not a failure (see ``run_check``): an overloaded director
  must not take healthy servers out;
* so is a failed check while ``hold`` names a fault of the director's own
  (the director passes its failover's ``link_fault``: every VRRP instance is
  in fault for a link of its own, so the peer holds the VIPs). Otherwise every server
  would fail at once, leave the table, and the sessions the peer kept would
  be reset when this director takes the VIPs back. A maintenance file is the
  operator's word, not a check, and is never held.

Transitions are handed, in the order decided, to ``on_transition`` as they are decided
(the director turns them into one scoped IPVS change); a callback that returns an awaitable
has it awaited by one task, in the same order. With ``workers`` > 0 the targets are shared between this process
and that many worker processes (``lvsmail.health.worker``), each checking its
share on its own event loop and sending every result back; the rise/fall
decisions, and so the transitions and the status, stay in this process.

On reload, a target whose address, port and check settings did not change
keeps its task and state, so a reload never flaps a server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import random
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from lvsmail.health.checkers import probe
from lvsmail.health.credentials import Credentials, CredentialsError, load_credentials
from lvsmail.health.driver import Driver, Job, Timer, driver_for
from lvsmail.health.result import Result
from lvsmail.health.state import HealthState, TransitionEvent, next_interval, step
from lvsmail.health.via_vip import probe_marks, source_towards
from lvsmail.health.workerlink import WorkerLink
from lvsmail.spec import CheckSpec, ClusterSpec

log = logging.getLogger("lvsmail.health")

#: Default bound on checks in flight. Waiting for a slot is not part of a check's timeout,
#: but time spent waiting for a saturated event loop is: with 512 in flight and the loop
#: 1.8x overloaded, 245 of 1,000 healthy servers timed out (false "down"); with 64, none did
#: (bench/health_profile.py). 64 in flight at ~30 ms each is ~2,000 checks/s natively.
DEFAULT_CONCURRENCY = 64

#: From this many targets on, a machine with two or more CPUs shares the checks with one worker process
#: by default. Measured in the lab (bench/RESULTS.md, run 4): one worker lowered CPU per check by
#: 17-29% and raised completed checks by 15-130% at N = 100, 500 and 1,000.
AUTO_WORKER_TARGETS = 100

Key = tuple[str, str, int]  # (service name, real server address, port)
#: A checker coroutine function (``probe``'s signature), run on the check driver.
Checker = Callable[..., Awaitable[Result]]
#: Called with each transition as it is decided; an awaitable it returns is awaited in order by one task.
OnTransition = Callable[["Target", TransitionEvent], Awaitable[None] | None]
#: Called with every result, counted or not (a worker's outbox, the metrics histogram).
OnResult = Callable[[Key, Result], None]
#: Why the director's own faults make failed checks meaningless now (failover's ``link_fault``), or None.
Hold = Callable[[], str | None]


@dataclass(frozen=True)
class Target:
    """One real server under one service's check."""

    service: str
    address: str
    port: int
    check: CheckSpec
    virtual: tuple[str, int | None]  # (VIP or fwmark number, port) for external commands
    names: tuple[str, ...] = ()  # file names that put it in maintenance: address, address:port, name
    mark: int | None = None  # via: vip — probe the VIP with this socket mark

    @property
    def key(self) -> Key:
        """How the director names this server's health."""
        return (self.service, self.address, self.port)


def targets(cluster: ClusterSpec) -> dict[Key, Target]:
    """Every (service, real server) pair to watch; the fallback server is never checked.

    With a maintenance directory, services without a check are watched too
    (an ``on`` check, no network), so maintenance files work for every service.
    """
    marks = probe_marks(cluster)
    out: dict[Key, Target] = {}
    for svc in cluster.services:
        check = svc.check
        if check is None:
            if cluster.maintenance_dir is None:
                continue
            check = CheckSpec(type="on")
        # External commands get ldirectord's arguments: the VIP (or the bare mark) and the port (0 for fwmark).
        virtual = (svc.vip, svc.port) if svc.vip else (str(svc.fwmark), 0)
        for rs in svc.realservers:
            names = (rs.address, f"{rs.address}:{rs.port}") + ((rs.name,) if rs.name else ())
            t = Target(svc.name, rs.address, rs.port, check, virtual, names,
                       marks.get((svc.name, rs.address, rs.port)))
            out[t.key] = t
    return out


def default_workers(n_targets: int, real_checks: bool, cpus: int | None) -> int:
    """Worker processes when none are configured: one for a large cluster on a multi-CPU machine."""
    return 1 if real_checks and n_targets >= AUTO_WORKER_TARGETS and (cpus or 1) >= 2 else 0


class HealthEngine:
    """Runs every check of a cluster and reports up/down transitions."""

    def __init__(
        self,
        cluster: ClusterSpec | None,
        on_transition: OnTransition,
        *,
        on_result: OnResult | None = None,
        hold: Hold | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        checker: Checker = probe,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        workers: int | None = None,
    ) -> None:
        self.on_transition = on_transition
        self.checker = checker
        self.clock = clock
        self.rng = rng or random.Random()
        self.states: dict[Key, HealthState] = {}
        self.checks_done = 0
        self.concurrency = concurrency
        self._targets: dict[Key, Target] = {}
        self._driver: Driver | None = None  # the running loop's, from start()
        # The next check of each target of this process's share, armed when a check starts: if that
        # check is still in flight when the timer fires, the timer starts a fresh one beside it.
        self._timers: dict[Key, Timer] = {}
        self._jobs: dict[Key, list[_Flight]] = {}  # checks in flight: one, or two when one is overdue
        self._flying = 0  # how many checks are in flight, all targets together (at most ``concurrency``)
        self._queue: deque[Target] = deque()  # checks due while ``concurrency`` were in flight
        self._starting = False  # _start_queued is running
        self._transitions: asyncio.Queue = asyncio.Queue()  # on_transition's awaitables, awaited in order
        self._acting: asyncio.Task | None = None
        self._credentials: dict[str, Credentials | CredentialsError] = {}
        self._running = False
        self.workers = workers  # extra processes that run checks (0: all here; None: default_workers at start)
        self._links: list[WorkerLink] = []  # one per worker process, once started
        self.on_result = on_result  # every result (a worker's outbox)
        self.hold = hold  # a fault of the director's own: failures not counted
        self._holding: str | None = None  # the hold in force, logged when it begins and ends
        self._held = 0  # failures not counted under it
        self.maintenance_dir = cluster.maintenance_dir if cluster is not None else None
        self._pending = targets(cluster) if cluster is not None else {}
        for key, t in self._pending.items():
            self.states[key] = HealthState.initial(t.check, self.clock())

    def health(self) -> dict[Key, bool]:
        """Up or down per checked real server (unchecked ones are in their ``start`` state)."""
        return {k: s.up for k, s in self.states.items()}

    def service_up(self, name: str) -> bool | None:
        """Whether any real server of service ``name`` is up; None when none of them is checked here."""
        ups = [s.up for (service, _address, _port), s in self.states.items() if service == name]
        return any(ups) if ups else None

    def queued(self) -> int:
        """How many due checks wait for a free slot (``concurrency`` are in flight)."""
        return len(self._queue)

    def worker_pids(self) -> list[int]:
        """The process ids of the running worker processes."""
        return [pid for pid in (link.pid for link in self._links) if pid is not None]

    def start(self) -> None:
        """Schedule the checks of this process's share, start the workers (call from the running loop)."""
        self._running = True
        self._driver = driver_for()
        self._acting = asyncio.get_running_loop().create_task(self._act(), name="health transitions")
        if self.workers is None:  # worker processes cannot run a checker passed in (tests script theirs)
            self.workers = default_workers(len(self._pending), self.checker is probe, os.cpu_count())
        if self.workers > 0 and not self._links:
            self._links = [WorkerLink(i + 1, self) for i in range(self.workers)]
        self._apply_targets(self._pending)

    def share(self, key: Key) -> int:
        """Which process checks ``key``: 0 is this one, 1..workers the worker processes (stable across reloads)."""
        if not self.workers:
            return 0
        return zlib.crc32(repr(key).encode()) % (self.workers + 1)

    def update(self, cluster: ClusterSpec) -> None:
        """Follow a reloaded cluster: keep unchanged targets, start new ones, stop removed ones."""
        self.assign(targets(cluster), cluster.maintenance_dir)

    def assign(self, new: dict[Key, Target], maintenance_dir: str | None) -> None:
        """Watch exactly ``new`` (a worker process is given its share this way)."""
        self.maintenance_dir = maintenance_dir
        if not self._running:
            self._pending = new
        self._apply_targets(new)

    async def stop(self) -> None:
        """Stop the schedule and cancel the checks in flight (their sockets close on cancellation)."""
        self._running = False
        for key in list(self._targets):
            self._unschedule(key)
        self._queue.clear()
        if self._acting is not None:
            self._acting.cancel()
            await asyncio.gather(self._acting, return_exceptions=True)
            self._acting = None
        while not self._transitions.empty():  # decided but not acted on: the director is stopping too
            pending = self._transitions.get_nowait()
            if inspect.iscoroutine(pending):
                pending.close()
        links, self._links = self._links, []
        await asyncio.gather(*(link.stop() for link in links), return_exceptions=True)

    def _apply_targets(self, new: dict[Key, Target]) -> None:
        """Follow ``new``. A real server that appears while the engine runs (a reload adds it, or it
        joined through the registration API) has never been checked: it starts down and enters the
        table with its first good check. ``start:`` is for the director's own start, where ``up``
        keeps a restarting director's table as it was."""
        now = self.clock()
        known = set(self._targets)
        for key in list(self._targets):
            if key not in new or new[key] != self._targets[key]:
                self._unschedule(key)
                old = self._targets.pop(key)
                if key in new and _same_probe(old.check, new[key].check):
                    # Only rise/fall/interval-like settings changed: keep the verdict.
                    self.states[key] = self.states[key].retuned(new[key].check)
                else:
                    self.states.pop(key, None)
        for key, t in new.items():
            if key in self._targets:
                continue
            self._targets[key] = t
            if key not in self.states:
                state = HealthState.initial(t.check, now)
                if self._running and key not in known and state.up and t.check.type != "on":
                    state = dataclasses.replace(state, up=False, last_reason="new: down until its first good check")
                self.states[key] = state
            if self._running and self.share(key) == 0:
                # Warm-up jitter: the first checks spread over one interval.
                self._schedule(t, self._driver.time() + self.rng.uniform(0, t.check.interval))
        for link in self._links:  # a worker keeps the state of its unchanged targets, as this process does
            link.assign({k: t for k, t in new.items() if self.share(k) == link.index}, self.maintenance_dir)

    # -- the schedule ----------------------------------------------------------------------------

    def _schedule(self, t: Target, when: float) -> None:
        self._timers[t.key] = self._driver.call_at(when, lambda: self._due(t))

    def _unschedule(self, key: Key) -> None:
        """Forget ``key``'s next check and cancel the ones in flight (a removed or changed target)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._drop(key)

    def _drop(self, key: Key) -> None:
        """Cancel ``key``'s checks in flight; their outcomes are not counted."""
        for flight in self._jobs.pop(key, ()):
            self._flying -= 1
            flight.cancelled = True
            if flight.job is not None:
                flight.job.cancel()

    def _due(self, t: Target) -> None:
        """``t``'s check is due: start it, or queue it while ``concurrency`` checks are in flight.

        If the last check is still waiting (a hung server, a SYN being retransmitted), a fresh one
        starts beside it when there is room. An extra is never queued and arms no timer, so a
        target has at most one.
        """
        del self._timers[t.key]
        flights = self._jobs.get(t.key)
        if flights is not None:
            if len(flights) == 1 and self._flying < self.concurrency and self._running:
                self._begin(t, extra=True)
            return
        if self._flying >= self.concurrency:
            self._queue.append(t)
        else:
            self._begin(t)

    def _begin(self, t: Target, extra: bool = False) -> None:
        """Start one check of ``t``; its result is counted and its next check scheduled when it ends.

        A check that is not an ``extra`` arms the target's timer for when the next one is due, so
        each check costs one timer whether it answers in time or hangs (see ``_due``).
        """
        started = self._driver.time()
        flight = _Flight(started, extra)
        result = self._precheck(t)
        if result is not None:
            self._finished(t, flight, result, None)
            return
        self._jobs.setdefault(t.key, []).append(flight)
        self._flying += 1
        flight.in_air = True
        job = self._driver.spawn(self._probe(t, self._creds(t.check)),
                                 lambda value, exc: self._finished(t, flight, value, exc))
        flight.job = job
        if not flight.in_air:
            return  # it ended at once
        if flight.cancelled:  # dropped while it started (nothing does this today; its outcome must not count)
            job.cancel()
            return
        if not extra:
            self._schedule(t, started + next_interval(self.states[t.key], t.check))

    def _land(self, key: Key, flight: _Flight) -> None:
        """``flight`` is no longer in the air (ended, or cancelled by ``_drop``, which lands it itself)."""
        if flight.in_air:
            flight.in_air = False
            if not flight.cancelled:
                self._flying -= 1
                flights = self._jobs[key]
                flights.remove(flight)
                if not flights:
                    del self._jobs[key]

    def _finished(self, t: Target, flight: _Flight, result: Result | None, exc: BaseException | None) -> None:
        """One check of ``t`` ended: count it, schedule the next, start a queued check.

        With two checks in the air, the first conclusive answer is the verdict: the other check is
        cancelled, so rise and fall count one answer, not one per check. An inconclusive answer
        leaves the other check to answer for this round.
        """
        self._land(t.key, flight)
        if not (flight.cancelled or isinstance(exc, asyncio.CancelledError)) and self._targets.get(t.key) is t:
            # (else cancelled: removed, changed, stopped or answered by the other check;
            # a changed target has its own schedule)
            if exc is not None:  # a checker bug must not stop this server's checks
                log.error("health: %s check of %s:%s raised %s: %s", t.check.type, t.address, t.port,
                          type(exc).__name__, exc, exc_info=exc)
                result = Result(False, f"{t.check.type} {t.address}:{t.port}: checker error: "
                                       f"{type(exc).__name__}: {exc}", 0.0, "checker error")
            if result.inconclusive and t.key in self._jobs:
                self.record(t, result)  # not counted; the other check's answer will be
            else:
                self._drop(t.key)  # the other check, if any: this is the answer
                state = self.record(t, result)
                if self._running and self._targets.get(t.key) is t:
                    self._reschedule(t, flight.started + next_interval(state, t.check))
        self._start_queued()

    def _reschedule(self, t: Target, when: float) -> None:
        """Make ``t``'s next check due at ``when`` (or now, if that has passed), keeping the timer its
        check armed when the verdict left the interval as it was: the common case costs no timer."""
        timer = self._timers.get(t.key)
        if timer is not None:
            if timer.when == when:
                return
            timer.cancel()
        self._schedule(t, max(self._driver.time(), when))

    def _start_queued(self) -> None:
        """Start queued checks while there is room (a loop, not a recursion: a check may end at once)."""
        if self._starting:
            return
        self._starting = True
        try:
            while self._queue and self._flying < self.concurrency and self._running:
                queued = self._queue.popleft()
                if self._targets.get(queued.key) is queued:
                    self._begin(queued)
        finally:
            self._starting = False

    def _precheck(self, t: Target) -> Result | None:
        """The verdict without a probe, if there is one: a maintenance file, or credentials that cannot be read."""
        flag = self._maintenance_file(t)
        if flag:
            return Result(False, f"{t.check.type} {t.address}:{t.port}: in maintenance ({flag} exists)",
                          0.0, "maintenance")
        creds = self._creds(t.check)
        if isinstance(creds, CredentialsError):
            # Probing without the configured login would pass a server whose logins fail.
            return Result(False, f"{t.check.type} {t.address}:{t.port}: {creds}", 0.0, "credentials")
        return None

    async def check_now(self, key: Key) -> tuple[Result, HealthState]:
        """Check ``key`` once now, outside its schedule (an operator's re-check); the result counts as usual."""
        t = self._targets.get(key)
        if t is None:
            raise KeyError(key)
        result = self._precheck(t)
        if result is None:
            result = await (self._driver or driver_for()).run(self._probe(t, self._creds(t.check)))
        return result, self.record(t, result)

    async def _act(self) -> None:
        """Await what ``on_transition`` returned for each transition, in the order decided."""
        while True:
            t, event, pending = await self._transitions.get()
            try:
                await pending
            except Exception:  # the director's problem must not stop this server's checks
                log.exception("health: acting on %s transition of %s failed", event.word, t.key)

    def _transition(self, t: Target, event: TransitionEvent) -> None:
        """Hand one transition to ``on_transition`` now; queue what it returns to be awaited in order.

        Not once the engine has stopped: a late result (a worker's last batch, read while its link
        stops) still changes the state, but the director has stopped acting on transitions.
        """
        if not self._running:
            return
        try:
            pending = self.on_transition(t, event)
        except Exception:  # the director's problem must not stop this server's checks
            log.exception("health: acting on %s transition of %s failed", event.word, t.key)
            return
        if inspect.isawaitable(pending):
            self._transitions.put_nowait((t, event, pending))

    def record(self, t: Target, result: Result) -> HealthState:
        """Count one result of ``t`` (checked here or by a worker): the new state; a transition goes to
        ``on_transition`` at once."""
        self.checks_done += 1
        result = self._held_result(result)
        state, event = step(self.states[t.key], result, self.clock())
        self.states[t.key] = state
        if self.on_result is not None:
            self.on_result(t.key, result)
        if result.inconclusive and self._holding is None:
            log.info("health: %s %s:%s not counted: %s", t.service, t.address, t.port, result.reason)
        if event is not None:
            log.warning("health: %s %s:%s %s: %s", t.service, t.address, t.port, event.word, event.reason)
            self._transition(t, event)
        return state

    def _held_result(self, result: Result) -> Result:
        """``result``, or a failure turned inconclusive while ``hold`` names a fault of the director's own."""
        if self.hold is None or (result.ok and self._holding is None):
            return result  # asked on failures only (and, while holding, to see it end): a success costs nothing
        why = self.hold()
        if why != self._holding:
            if self._holding is not None:
                log.warning("health: checks count again (%d failed checks not counted while %s)",
                            self._held, self._holding)
            if why is not None:
                log.warning("health: failed checks not counted while %s: the failures are this director's own",
                            why)
            self._holding, self._held = why, 0
        if why is None or result.ok or result.inconclusive or result.step == "maintenance":
            return result
        self._held += 1
        return replace(result, inconclusive=True, reason=f"{result.reason} (not counted: {why})")

    def remote_result(self, key: Key, result: Result) -> None:
        """A worker's result: counted if ``key`` is still watched (a reload may have removed it meanwhile)."""
        t = self._targets.get(key)
        if t is not None and key in self.states:
            self.record(t, result)

    def _probe(self, t: Target, creds: Credentials | None) -> Coroutine[Any, Any, Result]:
        """The check's coroutine: at the real server, or at the VIP with the server's probe mark.

        The checker's own coroutine, not one awaiting it: each level of an
        await chain is walked again every time the check resumes.
        """
        if t.mark is None:
            return self.checker(t.check, t.address, t.port, creds, virtual=t.virtual)
        vip, vport = t.virtual
        port = t.check.port or vport
        try:
            source = source_towards(t.address)
        except OSError as exc:
            return _result(Result(False, f"{t.check.type} {t.address}:{t.port} via {vip}:{port}: no route: "
                                         f"{exc.strerror}", 0.0, "route"))
        return self.checker(t.check, vip, vport, creds, virtual=t.virtual, mark=t.mark, source=source,
                            peer=f"{t.address}:{port} via {vip}:{port}")

    def _maintenance_file(self, t: Target) -> str | None:
        """The maintenance file that forces this server down (ldirectord's maintenancedir), if any."""
        if self.maintenance_dir is None:
            return None
        for name in t.names:
            path = os.path.join(self.maintenance_dir, name)
            if os.path.exists(path):
                return path
        return None

    def _creds(self, check: CheckSpec) -> Credentials | CredentialsError | None:
        """Credentials are read once per file and engine; an unusable file fails its checks, not the engine."""
        if check.credentials is None:
            return None
        if check.credentials not in self._credentials:
            try:
                self._credentials[check.credentials] = load_credentials(check.credentials)
            except CredentialsError as exc:
                log.error("health: %s", exc)
                self._credentials[check.credentials] = exc
        return self._credentials[check.credentials]


async def _result(result: Result) -> Result:
    """A verdict reached without probing, as a check coroutine."""
    return result


@dataclass(eq=False, slots=True)
class _Flight:
    """One check of a target in the air."""

    started: float  # on the driver's clock: the next check is due interval after the answering one started
    extra: bool  # started beside an overdue check
    job: Job | None = None
    in_air: bool = False  # counted in the engine's ``_flying`` and listed in its ``_jobs``
    cancelled: bool = False  # its outcome is not counted: another check answered, or the target changed


def _same_probe(a: CheckSpec, b: CheckSpec) -> bool:
    """True when two checks probe the same way (only thresholds or timing differ)."""
    neutral = dict(interval=0.0, rise=1, fall=1, start="up")
    return replace(a, **neutral) == replace(b, **neutral)
