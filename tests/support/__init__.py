"""Helpers shared by the test suites: polling instead of sleeping, a checker the test scripts.

Imported as ``support`` (``from support import until``): pytest puts ``tests/``
on ``sys.path`` for ``tests/conftest.py``, as it does for ``ocf_harness``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(cond: Callable[[], object], timeout: float = 5.0, step: float = 0.01) -> None:
    """Poll ``cond`` every ``step`` seconds until it is true; AssertionError after ``timeout`` seconds.

    The director acts asynchronously: a test waits for the state it expects instead of
    sleeping a fixed time, which is both faster and not flaky on a loaded machine.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(step)


class ScriptedChecks:
    """A health checker whose verdict per real server the test flips (add an address to ``down``).

    ``failure`` is the failed step's words and name (the reason reads "smtp ADDR:PORT: WORDS");
    the latencies are what the results report. ``calls`` counts the checks run.
    """

    def __init__(self, failure: tuple[str, str] = ("connect: connection refused", "connect"), *,
                 down_latency: float = 0.001, up_latency: float = 0.001) -> None:
        self.down: set[str] = set()
        self.calls = 0
        self.failure = failure
        self.down_latency = down_latency
        self.up_latency = up_latency

    async def __call__(self, spec, address, port, creds, virtual=None):
        """One check of ``address:port``: down if the test put the address in ``down``."""
        from lvsmail.health.result import Result

        self.calls += 1
        if address in self.down:
            words, step = self.failure
            return Result(False, f"smtp {address}:{port}: {words}", self.down_latency, step)
        return Result(True, f"smtp {address}:{port}: ok", self.up_latency, "done")
