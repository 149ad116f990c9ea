"""The check driver keeps nothing of a finished check: a cancelled deadline's timer lets go of the job."""

import asyncio
import gc
import weakref

from lvsmail.health.driver import deadline, driver_for


def test_a_check_that_ends_before_its_deadline_is_freed_before_the_deadline_comes_round():
    """A check cut short (a hostile peer's flood stopped at a limit) ends long before its timeout; its
    cancelled timer stays in the heap until then, and must not keep the check's coroutine alive."""
    class Payload:
        """What a check returns (a Result, with its reason)."""

    async def check():
        with deadline(60.0):
            return Payload()

    async def main():
        result = weakref.ref(await driver_for().run(check()))
        await asyncio.sleep(0)  # the future's done callbacks run (they hold it until then)
        gc.collect()
        return result(), len(driver_for()._timers)

    alive, pending = asyncio.run(main())
    assert pending == 1  # the cancelled timer is still in the heap (it comes round in 60 s) ...
    assert alive is None  # ... but holds nothing of the finished check


def test_a_timer_that_ran_drops_its_callback():
    async def main():
        driver = driver_for()
        ran = []
        timer = driver.call_at(driver.time(), lambda: ran.append(1))
        await asyncio.sleep(0.01)
        return ran, timer.callback, timer.cancelled

    assert asyncio.run(main()) == ([1], None, True)
