"""The check driver: parking and resuming, deadlines, cancellation, asyncio futures, sockets, timers."""

import asyncio
import os
import socket

import pytest

from lvsmail.health.driver import PARK, current_job, deadline, driver_for


def run(main):
    return asyncio.run(main())


def test_a_parked_check_resumes_when_asked_and_returns_its_value():
    async def check(box):
        box.append(current_job())
        await PARK
        return "done"

    async def main():
        box = []
        fut = driver_for().run(check(box))
        await asyncio.sleep(0)
        assert not fut.done()  # parked: nothing resumes it by itself
        box[0].resume()
        return await fut

    assert run(main) == "done"


def test_a_deadline_throws_timeout_where_the_check_waits():
    async def check():
        with deadline(0.05) as d:
            try:
                await PARK  # never resumed
            except TimeoutError:
                return "timed out", d.expired()
        return "not reached", d.expired()

    async def main():
        return await driver_for().run(check())

    assert run(main) == ("timed out", True)


def test_a_block_that_ends_in_time_is_not_interrupted_later():
    async def check():
        with deadline(0.05) as d:
            pass
        await asyncio.sleep(0.15)  # past the deadline: it must not fire into this wait
        return d.expired()

    async def main():
        return await driver_for().run(check())

    assert run(main) is False


def test_a_deadline_cancels_the_asyncio_future_the_check_awaits():
    async def check(fut):
        with deadline(0.05):
            await fut

    async def main():
        fut = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await driver_for().run(check(fut))
        return fut.cancelled()

    assert run(main) is True


def test_asyncio_futures_and_sleeps_can_be_awaited():
    async def check():
        await asyncio.sleep(0.01)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: 6 * 7)

    async def main():
        return await driver_for().run(check())

    assert run(main) == 42


def test_cancellation_runs_the_checks_cleanup_which_may_still_await():
    """As asyncio cancels a task: CancelledError where it waits, and its ``finally`` may await (an external
    check waits for its killed command there)."""
    steps = []

    async def check():
        try:
            await PARK
        finally:
            steps.append("cleanup")
            await asyncio.sleep(0.01)
            steps.append("cleaned")

    async def main():
        outcome = []
        job = driver_for().spawn(check(), lambda value, exc: outcome.append(exc))
        job.cancel()
        await asyncio.sleep(0.05)
        return outcome

    outcome = run(main)
    assert steps == ["cleanup", "cleaned"]
    assert len(outcome) == 1 and isinstance(outcome[0], asyncio.CancelledError)


def test_cancelling_the_future_of_run_cancels_the_check():
    closed = []

    async def check():
        try:
            await PARK
        finally:
            closed.append(True)

    async def main():
        fut = driver_for().run(check())
        fut.cancel()
        await asyncio.sleep(0.01)

    run(main)
    assert closed == [True]


def test_an_exception_in_a_check_reaches_its_owner():
    async def check():
        raise ValueError("broken checker")

    async def main():
        outcome = []
        driver_for().spawn(check(), lambda value, exc: outcome.append(exc))
        return outcome

    [exc] = run(main)
    assert isinstance(exc, ValueError) and str(exc) == "broken checker"


def test_awaiting_what_the_driver_cannot_wait_for_is_an_error_in_the_check():
    class Odd:
        def __await__(self):
            yield "something else"

    async def check():
        await Odd()

    async def main():
        with pytest.raises(RuntimeError, match="cannot wait for"):
            await driver_for().run(check())

    run(main)


def test_deadline_outside_a_check_is_refused():
    async def main():
        with pytest.raises(RuntimeError, match="not inside a check"):
            deadline(1.0)

    run(main)


def test_the_current_job_is_restored_after_a_nested_start():
    async def inner():
        return current_job()

    async def outer():
        me = current_job()
        nested = []
        driver_for().spawn(inner(), lambda value, exc: nested.append(value))
        return me is current_job() and nested[0] is not me

    async def main():
        return await driver_for().run(outer())

    assert run(main) is True


class Owner:
    """Records the driver's callbacks for one socket; can stop watching another socket from its callback."""

    def __init__(self, name, log, driver=None, drop=()):
        self.name, self.log, self.driver, self.drop = name, log, driver, drop

    def _readable(self):
        self.log.append(self.name)
        for fd in self.drop:
            self.driver.listen(fd, None, False, False)

    def _writable(self):
        self.log.append(self.name + " writable")


def test_sockets_are_watched_for_what_is_asked_and_no_longer_once_dropped():
    async def main():
        driver, log = driver_for(), []
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            driver.listen(a.fileno(), Owner("a", log), read=True, write=False)
            b.send(b"x")
            await asyncio.sleep(0.02)
            assert log and set(log) == {"a"}  # level-triggered: until read, it stays readable
            a.recv(1)
            log.clear()
            driver.listen(a.fileno(), Owner("a", log), read=False, write=True)
            await asyncio.sleep(0.02)
            assert log and set(log) == {"a writable"}
            driver.listen(a.fileno(), None, False, False)
            log.clear()
            b.send(b"y")
            await asyncio.sleep(0.02)
            assert log == []

    run(main)


def test_an_event_for_a_socket_dropped_earlier_in_the_same_batch_is_not_delivered():
    """A check that ends closes its socket; the next check's socket may get the same number at once. The
    rest of the batch still carries the old socket's event for that number: it must not reach the new one."""
    async def main():
        driver, log, pairs = driver_for(), [], {}

        class First:
            def __init__(self, name):
                self.name = name

            def _readable(self):
                log.append(self.name)
                other = "c" if self.name == "a" else "a"
                mine, theirs = pairs[self.name], pairs[other]
                driver.listen(mine[0].fileno(), None, False, False)
                number = theirs[0].fileno()
                driver.listen(number, None, False, False)
                new = socket.socketpair()  # nothing to read on it
                pairs["new"] = new
                os.dup2(new[0].fileno(), number)  # the number now names the new, quiet socket
                driver.listen(number, Owner("new", log), read=True, write=False)

        pairs["a"], pairs["c"] = socket.socketpair(), socket.socketpair()
        for name in ("a", "c"):
            driver.listen(pairs[name][0].fileno(), First(name), read=True, write=False)
        pairs["a"][1].send(b"x")
        pairs["c"][1].send(b"x")
        await asyncio.sleep(0.02)
        for pair in pairs.values():
            for sock in pair:
                sock.close()
        return log

    log = run(main)
    assert log in (["a"], ["c"])


def test_timers_run_in_order_and_a_cancelled_one_never_runs():
    async def main():
        driver, ran = driver_for(), []
        now = driver.time()
        driver.call_at(now + 0.03, lambda: ran.append(3))
        driver.call_at(now + 0.01, lambda: ran.append(1))
        driver.call_at(now + 0.02, lambda: ran.append(2)).cancel()
        await asyncio.sleep(0.06)
        return ran

    assert run(main) == [1, 3]


def test_a_failing_timer_callback_is_logged_and_the_others_still_run(caplog):
    def broken():
        raise ValueError("bug")

    async def main():
        driver, ran = driver_for(), []
        now = driver.time()
        driver.call_at(now + 0.01, broken)
        driver.call_at(now + 0.01, lambda: ran.append("same time"))
        driver.call_at(now + 0.03, lambda: ran.append("later"))
        await asyncio.sleep(0.06)
        return ran

    assert run(main) == ["same time", "later"]
    assert "timer callback" in caplog.text and "ValueError: bug" in caplog.text


def test_timers_do_not_wake_the_loop_again_and_again_on_uvloop(monkeypatch):
    """uvloop rounds delays to whole milliseconds and may wake the driver before a timer is due; the
    driver must run it then, not re-arm and spin until the clock catches up (five wake-ups per timer)."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop (the 'fast' extra) is not installed")
    from lvsmail.health import loop

    monkeypatch.delenv("LVSMAIL_EVENT_LOOP", raising=False)

    async def main():
        # The director's own runner (uvloop 0.17, Debian 12's, has no uvloop.run) on uvloop's loop.
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        driver, ran, fired = driver_for(), [], [0]
        fire = driver._fire

        def counting():
            fired[0] += 1
            fire()

        driver._fire = counting
        now = driver.time()
        for i in range(100):
            driver.call_at(now + 0.01 + i * 0.0023, lambda: ran.append(1))
        await asyncio.sleep(0.4)
        return len(ran), fired[0]

    ran, fired = loop.run(main())
    assert ran == 100
    assert fired <= 110
