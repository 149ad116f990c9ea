"""The director's event stream: health transitions, VRRP transitions, kernel changes, operator actions.

The hub keeps the last events for ``status`` and hands each new one to every
subscriber of the local API's ``events`` request. It is fed by wrapping hooks
the director already has (the health engine's transition callback and result
outbox, the reconciler's ``sync``), both handed over explicitly, and by
watching the VRRP instances' roles through the director's view, so the
modules that make these decisions do not need to know that anybody listens.

A subscriber that does not read (a stopped dashboard over a slow SSH link)
must not hold the director's memory: its queue is bounded, and when it is
full the oldest event is dropped and the next one it receives says how many
it missed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

log = logging.getLogger("lvsmail.director.events")

#: Events kept for ``status`` and for a subscriber's first screen.
HISTORY = 100
#: Events queued for one subscriber before the oldest are dropped.
QUEUE = 1000
#: Seconds between looks at the VRRP instances' roles.
VRRP_POLL = 0.2


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


def attach(engine, reconciler, hub: EventHub, on_result: Callable | None = None) -> Callable[[], None]:
    """Feed ``hub`` from a running director's health engine and reconciler; returns a function that detaches.

    ``on_result`` (key, Result) additionally sees every check result (the
    metrics histogram). Wrapping instead of editing the director keeps the
    hooks' owners free to change how they act on a transition.
    """
    old_transition, old_result, old_sync = engine.on_transition, engine.on_result, reconciler.sync

    def on_transition(target, event):
        hub.publish("health", f"{target.service} {target.address}:{target.port} {event.word}: {event.reason}",
                    service=target.service, address=target.address, port=target.port, up=event.up,
                    reason=event.reason)
        return old_transition(target, event)  # the kernel table's is synchronous; the engine awaits an awaitable

    def result(key, res):
        if old_result is not None:
            old_result(key, res)
        if on_result is not None:
            on_result(key, res)

    async def sync(*args, **kwargs):
        report = await old_sync(*args, **kwargs)
        from lvsmail.ipvs.model import describe

        for op in report.applied:
            hub.publish("kernel", describe(op))
        return report

    engine.on_transition = on_transition
    engine.on_result = result
    reconciler.sync = sync

    def detach() -> None:
        engine.on_transition, engine.on_result = old_transition, old_result
        reconciler.sync = old_sync

    return detach


class VrrpWatch:
    """Turns changes of the VRRP instances' roles into events (the failover module publishes a file, not events)."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.roles: dict[str, tuple[str, str | None]] = {}  # instance -> (role, master)
        #: Transitions seen per instance since this director started (a counter for metrics).
        self.transitions: dict[str, int] = collections.Counter()

    def look(self, failover: dict | None) -> None:
        """Publish the role changes since the last look (``failover``: the failover's status, None without one)."""
        if failover is None:
            self.roles.clear()
            return
        seen = {}
        for inst in failover["instances"]:
            name, role = inst["name"], inst["role"]
            seen[name] = (role, inst.get("master"))
            before = self.roles.get(name)
            if before is not None and before[0] != role:
                self.transitions[name] += 1
                self.hub.publish("vrrp", f"{name}: {before[0]} -> {role}", instance=name, role=role,
                                 previous=before[0], master=seen[name][1])
        self.roles = seen


async def watch(view, hub: EventHub, vrrp: VrrpWatch, on_spec: Callable[[object], None],
                interval: float = VRRP_POLL) -> None:
    """Poll the director's view for what has no hook: VRRP roles and a reloaded spec (``on_spec`` gets it)."""
    spec = view.spec()
    while True:
        try:
            vrrp.look(view.failover())
            new = view.spec()
            if new is not spec:
                spec = new
                hub.publish("reload", f"configuration reloaded: {len(spec.services)} services")
                on_spec(spec)
        except Exception:  # a failover being rebuilt by a reload: look again next time, but say why
            log.exception("events: watching the director failed")
        await asyncio.sleep(interval)
