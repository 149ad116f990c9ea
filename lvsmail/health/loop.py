"""The event loop the director runs on: uvloop's when it is installed, asyncio's own otherwise.

Health checking a thousand real servers every 2 s is 500 short TCP dialogues a
second in one process, and the event loop's own bookkeeping (timers, callbacks,
transports) is a large share of each check's CPU. uvloop (the ``fast`` extra)
does the same work in C on libuv; lvsmail's code is identical on both loops and
is tested on asyncio's. ``LVSMAIL_EVENT_LOOP=asyncio`` forces asyncio's loop
(to compare, or to rule uvloop out when chasing a bug).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_module():
    """The uvloop module if it is installed and not turned off, else None."""
    if os.environ.get("LVSMAIL_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def name() -> str:
    """``uvloop`` or ``asyncio``: the loop ``run`` will use (for the start-up log line)."""
    return "uvloop" if uvloop_module() is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop's loop when available."""
    uvloop = uvloop_module()
    if uvloop is None:
        return asyncio.run(main)
    # asyncio.Runner with uvloop's loop factory, not uvloop.run(): that arrived in uvloop 0.18,
    # and Debian 12 packages 0.17; the runner is what uvloop.run() itself builds on Python 3.11+.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
