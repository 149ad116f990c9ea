"""The director's event stream: health transitions, VRRP transitions, kernel changes, operator actions.

The hub keeps the last events for ``status`` and hands each new one to every
subscriber of the local API's ``events`` request. Events are published where
they happen: the director's composition root owns the hub and hands its
``publish`` to each publisher as a callable (the kernel table: health and
kernel events; the failover's role hook: VRRP events; a good reload; the
local API: operator actions), so none of them knows who listens.

A subscriber that does not read (a stopped dashboard over a slow SSH link)
must not hold the director's memory: its queue is bounded, and when it is
full the oldest event is dropped and the next one it receives says how many
it missed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

#: Events kept for ``status`` and for a subscriber's first screen.
HISTORY = 100
#: Events queued for one subscriber before the oldest are dropped.
QUEUE = 1000


class EventHub:
    """Recent events and the live subscribers of the director's event stream."""

    def __init__(self, history: int = HISTORY, clock: Callable[[], float] = time.time) -> None:
        self.recent: collections.deque[dict] = collections.deque(maxlen=history)
        self.clock = clock
        self._subscribers: dict[asyncio.Queue, int] = {}  # queue -> events dropped since its last read

    def publish(self, kind: str, text: str, **fields) -> dict:
        """Record one event (``kind``: health, vrrp, kernel, operator, reload) and queue it for subscribers."""
        event = {"at": self.clock(), "kind": kind, "text": text, **fields}
        self.recent.append(event)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self._subscribers[queue] += 1
            queue.put_nowait(event)
        return event

    def last(self, n: int) -> list[dict]:
        """The last ``n`` events, oldest first."""
        return list(self.recent)[-n:] if n > 0 else []

    def subscribe(self, size: int = QUEUE) -> asyncio.Queue:
        """A queue that receives every event published from now on; give it back with ``unsubscribe``."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=size)
        self._subscribers[queue] = 0
        return queue

    def dropped(self, queue: asyncio.Queue) -> int:
        """How many events ``queue`` lost since the last call (and reset the count)."""
        n = self._subscribers.get(queue, 0)
        if n:
            self._subscribers[queue] = 0
        return n

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        """Stop queueing events for ``queue``."""
        self._subscribers.pop(queue, None)

    @property
    def subscribers(self) -> int:
        """How many connections follow the stream."""
        return len(self._subscribers)
