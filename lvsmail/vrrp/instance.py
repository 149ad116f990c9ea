"""The runtime of one VRRP instance: feeds the pure state machine and carries out its actions.

One task per instance owns the state. It waits for the next event (a received
advert, a tracking change, a stop request) or the state's next deadline,
whichever comes first, steps the machine and performs the actions in order.
Actions that take time — acquiring resources, running notify hooks — are
handed to their owners and never block the adverts; the owners report back
with events (a failed acquisition is a ``ResourceFault``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from lvsmail.vrrp.guard import ReceiveGuard
from lvsmail.vrrp.packet import Advertisement
from lvsmail.vrrp.state import (
    Advert,
    Announce,
    Discard,
    Event,
    ReleaseResources,
    Role,
    RunNotify,
    SendAdvert,
    Start,
    Stop,
    TakeResources,
    Tick,
    VrrpParams,
    VrrpState,
    initial,
    next_deadline,
    step,
)

log = logging.getLogger("lvsmail.vrrp")


class Transport(Protocol):
    """Where adverts go and come from (a VrrpSocket, or a fake link in tests)."""

    def send(self, adv: Advertisement) -> None:
        """Send one advert (may raise OSError)."""


class Hooks(Protocol):
    """What the instance asks of its owner (the director's failover)."""

    def want_resources(self, held: bool) -> None:
        """Start acquiring (True) or releasing (False) the resource group; returns at once."""

    def notify(self, role: Role, priority: int) -> None:
        """Start the notify hook for a new role; returns at once."""

    def changed(self, state: VrrpState) -> None:
        """The role changed (publish it)."""

    def announce(self, reason: str) -> None:
        """Announce the held addresses again (gratuitous ARP / NA); returns at once."""


class VrrpInstance:
    """One virtual router: the state machine, its timers and its transport."""

    def __init__(self, name: str, params: VrrpParams, addresses: tuple[str, ...], family: int,
                 transport: Transport, hooks: Hooks, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.params = params
        self.addresses = addresses
        self.family = family
        self.transport = transport
        self.hooks = hooks
        self.clock = clock
        self.state: VrrpState = initial(params, clock())
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.sent = 0
        self.last_heard: float | None = None  # when the last advert arrived (the master's last sign of life)
        self.takeover_since: float | None = None  # set when we took over as backup: last_heard at that moment
        # The transport's guard when it has one (a VrrpSocket), so its drops and ours are counted together.
        self.guard: ReceiveGuard = getattr(transport, "guard", None) or ReceiveGuard(name, clock=clock)

    def start(self) -> None:
        """Begin (Startup, RFC 5798 §6.4.1) in a task of the running loop."""
        self._events.put_nowait(Start())
        self._task = asyncio.create_task(self._run(), name=f"vrrp:{self.name}")

    def feed(self, event: Event) -> None:
        """Queue an event (an advert from the receiver, a tracking change, a resource fault)."""
        self._events.put_nowait(event)

    def received(self, source: str, ttl: int, adv: Advertisement) -> None:
        """Queue a received advert: unless it is for another VRID, crossed a router (RFC 5798 section 7.1)
        or its source is over its rate (see ``lvsmail.vrrp.guard``); those are only counted."""
        if adv.vrid != self.params.vrid:
            self.guard.drop("vrid", source)
            return
        if ttl != 255:
            self.guard.drop("ttl", source)
            return
        if not self.guard.admit(source, self.state.master, self.params.advert_interval, self.state.master_adver_int):
            return
        self.last_heard = self.clock()
        self.feed(Advert(source, adv.priority, adv.max_adver_int, adv.vrid, ttl))

    async def stop(self) -> None:
        """Shut down (a master advertises priority 0 first) and wait for the loop to end."""
        if self._task is None:
            return
        if not self._task.done():
            self.feed(Stop())
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except TimeoutError:
                self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        """Wait for an event or the next deadline; step; act. Ends after Stop."""
        while True:
            deadline = next_deadline(self.state)
            try:
                if deadline is None:
                    event = await self._events.get()
                else:
                    event = await asyncio.wait_for(self._events.get(), max(0.0, deadline - self.clock()))
            except TimeoutError:
                event = Tick()
            try:
                self._apply(event)
            except Exception:  # a bug must not leave the VIPs without a router: log loudly, keep going
                log.exception("vrrp %s: error handling %r", self.name, event)
            if isinstance(event, Stop):
                return

    def _apply(self, event: Event) -> None:
        """One step of the machine and its actions."""
        before = self.state
        self.state, actions = step(self.params, self.state, event, self.clock())
        for action in actions:
            if isinstance(action, SendAdvert):
                self._send(action.priority)
            elif isinstance(action, TakeResources):
                # A backup that takes over measures from the master's last advert (for the availability report).
                self.takeover_since = self.last_heard if before.role is Role.BACKUP else None
                self.hooks.want_resources(True)
            elif isinstance(action, ReleaseResources):
                self.hooks.want_resources(False)
            elif isinstance(action, RunNotify):
                self.hooks.notify(action.role, action.priority)
            elif isinstance(action, Announce):
                self.hooks.announce(action.reason)
            elif isinstance(action, Discard):
                log.debug("vrrp %s: %s", self.name, action.reason)
        if (self.state.role, self.state.priority, self.state.master) != (before.role, before.priority, before.master):
            if self.state.role is not before.role:
                why = f" ({', '.join(self.state.faults)})" if self.state.role is Role.FAULT else ""
                log.info("vrrp %s: %s -> %s, priority %d%s", self.name, before.role.value, self.state.role.value,
                         self.state.priority, why)
            self.hooks.changed(self.state)

    def _send(self, priority: int) -> None:
        """One advert; a send error is logged (the peer then takes over, which is the right outcome)."""
        adv = Advertisement(self.params.vrid, priority, self.params.advert_interval, self.addresses, self.family)
        try:
            self.transport.send(adv)
            self.sent += 1
        except OSError as exc:
            log.warning("vrrp %s: cannot send advert: %s", self.name, exc)

    @property
    def role(self) -> Role:
        """Current role."""
        return self.state.role
