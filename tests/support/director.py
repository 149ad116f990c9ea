"""A running Director for a test: started on the in-memory kernel, always stopped.

Tests that started a director by hand and stopped it at their end left it running
when an assertion failed in between (asyncio.run then cancelled it mid-step, and
the real failure drowned in the teardown's). ``running`` stops it on every exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS


@asynccontextmanager
async def running(path: str | Path, kernel=None, *, state_dir: str | Path, checker=None,
                  repair_interval: float = 30, ready_timeout: float = 5.0, **options) -> AsyncIterator[Director]:
    """A Director of ``path`` on ``kernel`` (a new FakeIPVS by default), ready; stopped when the block ends.

    ``checker`` replaces the health checks (e.g. ``support.ScriptedChecks()``); ``options`` go to Director.
    A director whose start fails (a bad file) raises that error here.
    """
    engine_options = dict(options.pop("engine_options", {}))
    if checker is not None:
        engine_options["checker"] = checker
    d = Director(str(path), kernel if kernel is not None else FakeIPVS(), repair_interval=repair_interval,
                 state_dir=str(state_dir), engine_options=engine_options, **options)
    task = asyncio.create_task(d.run(), name="director under test")
    ready = asyncio.create_task(d.ready.wait())
    try:
        await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if task.done():
        task.result()  # run() ended before ready: its error, or a director that returned at once
        raise AssertionError("the director stopped before it was ready")
    if not d.ready.is_set():
        d.request_stop()
        await task
        raise AssertionError(f"the director was not ready within {ready_timeout} s")
    try:
        yield d
    finally:
        d.request_stop()
        await task
