"""The check driver: many short check dialogues on one epoll, inside the director's asyncio loop.

A thousand real servers every 2 s are 500 checks a second. Run as asyncio
tasks, each check costs the loop about four task steps, four futures, two
timer handles and a selector registration: more Python than the dialogue
itself, and under the lab's CPU emulation the whole difference to keepalived's
C checker (bench/RESULTS.md). The driver keeps each checker one linear
coroutine (``await dlg.read_smtp_reply(...)``) but steps it itself, as
curio and trio do: a coroutine that waits for its socket parks (``park``),
and the socket's readiness, seen on the driver's own epoll, resumes it
directly. No task, no future, no handle per step.

What a coroutine run by the driver may await:

* ``PARK`` — until ``resume`` (a ``Dialogue`` parks until its socket is
  readable or writable, see ``listen``);
* any asyncio future (a name lookup, an external command's subprocess, a
  test's ``asyncio.sleep``): resumed from the future's done callback, as an
  asyncio task would be;
* nothing else (``asyncio.timeout`` needs a task; use ``deadline``).

``with deadline(seconds) as d:`` bounds a block: when it expires,
``TimeoutError`` is thrown into the coroutine where it waits (the future it
waited on is cancelled) and ``d.expired()`` is true — ``asyncio.timeout``'s
contract. ``call_at`` is the driver's timer (the engine's schedule), on the
loop's clock (``time.monotonic``). All of it runs on the asyncio loop's thread: the epoll is one
reader of the loop and the timers share one loop timer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import select
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("lvsmail.health")

_IN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
_OUT = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
class _Stepping(threading.local):
    """The job being stepped on this thread (None between steps)."""

    job: Job | None = None


_local = _Stepping()
#: Timers due within this many seconds run now. uvloop rounds a timer's delay to whole milliseconds, so
#: it wakes the driver up to half a millisecond early; without this margin the driver re-armed and woke
#: again until the clock caught up (five wake-ups per timer on uvloop, measured).
EARLY = 0.001


class _Park:
    """What a parked coroutine yields to the driver."""

    __slots__ = ()

    def __await__(self):
        yield self


#: ``await PARK``: wait until the driver is asked to ``resume`` the current job.
PARK = _Park()


def current_job() -> Job:
    """The job being stepped now; RuntimeError outside a coroutine run by a driver."""
    job = _local.job
    if job is None:
        raise RuntimeError("not inside a check run by the check driver (use Driver.run or Driver.spawn)")
    return job


def deadline(seconds: float) -> Deadline:
    """A block of the current job bounded to ``seconds`` (``with deadline(t) as d: ...``)."""
    job = current_job()
    return Deadline(job, job.driver.time() + seconds)


class Job:
    """One coroutine run by the driver, and what it waits for."""

    __slots__ = ("driver", "coro", "on_done", "parked", "future", "finished", "__weakref__")

    def __init__(self, driver: Driver, coro: Coroutine, on_done: Callable[[Any, BaseException | None], None]):
        self.driver = driver
        self.coro = coro
        self.on_done = on_done  # called once with (return value, None) or (None, exception)
        self.parked = False
        self.future: asyncio.Future | None = None  # the asyncio future it awaits, if any
        self.finished = False

    def resume(self) -> None:
        """Continue a parked job (its socket is ready); nothing if it is not parked."""
        if self.parked:
            self.parked = False
            self.driver._step(self, None)

    def throw(self, exc: BaseException) -> None:
        """Raise ``exc`` where the job waits (its deadline, or cancellation); the future it awaited is cancelled."""
        if self.finished:
            return
        fut, self.future = self.future, None
        if fut is not None:
            fut.remove_done_callback(self._future_done)
            fut.cancel()
        self.parked = False
        self.driver._step(self, exc)

    def cancel(self) -> None:
        """Stop the job as asyncio cancels a task: CancelledError where it waits (its ``finally`` runs)."""
        self.throw(asyncio.CancelledError())

    def _future_done(self, fut: asyncio.Future) -> None:
        if self.future is fut:
            self.future = None
            self.driver._step(self, None)


class Deadline:
    """The deadline of a block of one job; see ``deadline``."""

    __slots__ = ("job", "when", "_state", "_timer")

    def __init__(self, job: Job, when: float):
        self.job = job
        self.when = when
        self._state = "new"  # new -> active -> expired | done
        self._timer: Timer | None = None

    def __enter__(self) -> Deadline:
        self._state = "active"
        self._timer = self.job.driver.call_at(self.when, self._expire)
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if self._state == "active":
            self._state = "done"
            self._timer.cancel()
        return False  # the TimeoutError thrown at expiry propagates, as asyncio.timeout's does

    def expired(self) -> bool:
        """Whether this deadline ran out (and threw TimeoutError into the block)."""
        return self._state == "expired"

    def _expire(self) -> None:
        if self._state == "active":
            self._state = "expired"
            self.job.throw(TimeoutError())


class Timer:
    """A callback due at a time on the driver's clock; ``cancel`` before it runs and it never does."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run (a cancelled timer stays in the heap until it comes up, then is skipped).

        The callback is dropped at once: a deadline's callback holds its job, and with it the finished
        check's coroutine, reason and dialogue. A check that fails fast (a hostile peer's flood cut at a
        limit) would otherwise keep all of it alive until its timeout came round.
        """
        self.cancelled = True
        self.callback = None


class Driver:
    """Runs check coroutines for one asyncio loop: one epoll for their sockets, one heap for their timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)  # the loop owns the driver (driver_for), not the other way round
        self.time = time.monotonic  # asyncio's loop clock (uvloop's is the same clock, read per iteration)
        self._epoll = select.epoll()
        self._watched: dict[int, tuple[Any, int]] = {}  # fd -> (owner with _readable/_writable, events)
        self._dropped: set[int] = set()  # fds unwatched during the current batch (their events are stale)
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._firing = False  # _fire is running the due timers
        loop.add_reader(self._epoll.fileno(), self._poll)

    # -- jobs --------------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine, on_done: Callable[[Any, BaseException | None], None]) -> Job:
        """Start ``coro`` now (it runs until its first wait); ``on_done`` gets its outcome."""
        job = Job(self, coro, on_done)
        self._step(job, None)
        return job

    def run(self, coro: Coroutine) -> asyncio.Future:
        """Start ``coro`` and return a future of its outcome (for asyncio code: ``await driver.run(...)``)."""
        loop = self._loop()
        fut = loop.create_future()

        def done(value, exc):
            if fut.cancelled():
                return
            if exc is None:
                fut.set_result(value)
            else:
                fut.set_exception(exc)

        job = self.spawn(coro, done)
        fut.add_done_callback(lambda f: job.cancel() if f.cancelled() and not job.finished else None)
        return fut

    def _step(self, job: Job, exc: BaseException | None) -> None:
        """Run ``job`` until it waits again or ends."""
        outer, _local.job = _local.job, job
        try:
            try:
                waits = job.coro.send(None) if exc is None else job.coro.throw(exc)
            except StopIteration as stop:
                self._finish(job, stop.value, None)
                return
            except BaseException as error:  # noqa: BLE001 (handed to on_done, which decides)
                self._finish(job, None, error)
                if not isinstance(error, (Exception, asyncio.CancelledError)):
                    raise  # KeyboardInterrupt, SystemExit
                return
            if waits is PARK:
                job.parked = True
            elif getattr(waits, "_asyncio_future_blocking", None) is not None:
                waits._asyncio_future_blocking = False
                job.future = waits
                waits.add_done_callback(job._future_done)
            else:
                self._step(job, RuntimeError(f"a check awaited {waits!r}, which the check driver cannot wait for"))
        finally:
            _local.job = outer

    @staticmethod
    def _finish(job: Job, value: Any, exc: BaseException | None) -> None:
        job.finished = True
        job.on_done(value, exc)

    # -- sockets -----------------------------------------------------------------------------------

    def listen(self, fd: int, owner: Any, read: bool, write: bool) -> None:
        """Call ``owner._readable()`` / ``owner._writable()`` while ``fd`` is ready for what is asked.

        Neither: stop watching (do this before closing ``fd``). Error and hang-up
        conditions are delivered to whichever callback is asked for.
        """
        events = (_IN if read else 0) | (_OUT if write else 0)
        known = self._watched.get(fd)
        if not events:
            if known is not None:
                del self._watched[fd]
                self._epoll.unregister(fd)
                self._dropped.add(fd)
            return
        if known is None:
            self._epoll.register(fd, events)
        elif known[1] != events:
            self._epoll.modify(fd, events)
        self._watched[fd] = (owner, events)

    def _poll(self) -> None:
        """The loop's reader callback: deliver every ready socket's events."""
        self._dropped.clear()
        watched, dropped = self._watched, self._dropped
        for fd, events in self._epoll.poll(0):
            entry = watched.get(fd)
            if entry is None or fd in dropped:
                continue
            owner, wanted = entry
            if events & wanted & _IN and wanted & select.EPOLLIN:
                owner._readable()
                entry = watched.get(fd)
                if entry is None or fd in dropped:
                    continue
                owner, wanted = entry
            if events & wanted & _OUT and wanted & select.EPOLLOUT:
                owner._writable()

    # -- timers ------------------------------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` at ``when`` (the loop's clock)."""
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        if when < self._armed_at and not self._firing:  # (_fire arms for the earliest when it is done)
            self._arm(when)
        return timer

    def _arm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = when
        self._armed = self._loop().call_at(when, self._fire)

    def _fire(self) -> None:
        """The loop's timer: run every driver timer that is due, then wait for the next."""
        self._armed, self._armed_at = None, float("inf")
        timers = self._timers
        now = self.time() + EARLY
        self._firing = True
        try:
            self._run_due(now)
        finally:
            self._firing = False
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if timers:
            self._arm(timers[0][0])

    def _run_due(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                callback = timer.callback
                timer.cancelled, timer.callback = True, None  # ran: a later cancel() is harmless
                try:
                    callback()
                except Exception:  # one bad callback must not stop the schedule: the others are due too
                    log.exception("check driver: timer callback %r failed", callback)


_drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Driver] = weakref.WeakKeyDictionary()


def driver_for(loop: asyncio.AbstractEventLoop | None = None) -> Driver:
    """The driver of ``loop`` (the running loop by default), created on first use."""
    loop = loop or asyncio.get_running_loop()
    driver = _drivers.get(loop)
    if driver is None:
        driver = _drivers[loop] = Driver(loop)
    return driver
