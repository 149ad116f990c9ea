"""One VRRP instance of the director: its socket, state machine, resource group and notify hooks.

A :class:`Runner` is what ``lvsmail.vrrp.instance.VrrpInstance`` calls back
(``want_resources``, ``notify``, ``changed``, ``announce``). It is given what it
needs as a :class:`RunnerContext` of plain values and callables, so it knows
neither the director nor the other instances. A resource that cannot be
acquired puts the instance in Fault (it advertises priority 0 so the peer
takes over); after ``resource_retry`` seconds the fault is cleared and the
instance may try again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lvsmail.failover.hooks import RESOURCE_RETRY, AddressBackend, RoleChange
from lvsmail.failover.resources import (
    COMMAND_TIMEOUT,
    CommandResource,
    Resource,
    ResourceGroup,
    SyncResource,
    VipResource,
    run_command,
)
from lvsmail.spec import VrrpInstanceSpec
from lvsmail.vrrp.auth import AuthError, load_key
from lvsmail.vrrp.instance import VrrpInstance
from lvsmail.vrrp.packet import centiseconds
from lvsmail.vrrp.state import ResourceFault, Role, Track, VrrpParams, VrrpState

log = logging.getLogger("lvsmail.failover")

#: Seconds between two re-announcements a lower-priority master's adverts ask for (keepalived paces
#: its own with ``vrrp_garp_lower_prio_delay``).
ANNOUNCE_HOLDOFF = 5.0

#: Settings that can change on reload without restarting the instance.
RETUNABLE = ("priority", "advert_interval", "preempt", "preempt_delay", "notify", "track_interfaces",
             "track_services", "garp", "on_master", "on_backup")


def params_of(spec: VrrpInstanceSpec, primary: str) -> VrrpParams:
    """The state machine's constants from the instance's settings."""
    return VrrpParams(vrid=spec.vrid, priority=spec.priority, advert_interval=centiseconds(spec.advert_interval),
                      primary=primary, preempt=spec.preempt, preempt_delay=spec.preempt_delay)


@dataclass(frozen=True)
class RunnerContext:
    """What an instance is given by the failover that runs it."""

    net: AddressBackend  # adds and removes the VIPs
    announcer: Callable[..., Awaitable[None]]  # gratuitous ARP / unsolicited NA (interface, addrs, count, interval)
    primary_address: Callable[[VrrpInstanceSpec], str]  # the interface's own address adverts come from
    transport_factory: Callable[..., Any]  # (spec, primary, key) -> the VRRP transport
    sync_role: Callable[[], Any]  # the director's SyncRole, None without a sync: section
    on_change: Callable[[], None]  # a role or a held resource changed: publish the status
    on_takeover: Callable[[str, float], None]  # (what, seconds) once a backup holds the VIPs
    on_role: Callable[[RoleChange], None]  # the role differs from the last one reported
    prepare_announcer: Callable[[str], None] | None = None  # opens the announcement socket of an interface
    clock: Callable[[], float] = time.monotonic
    resource_retry: float = RESOURCE_RETRY


class Runner:
    """One instance: its socket, state machine task, resource group, notify hooks and tracking."""

    def __init__(self, spec: VrrpInstanceSpec, ctx: RunnerContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.instance: VrrpInstance | None = None
        self.transport = None
        self.problem: str | None = None  # why the instance could not start yet
        self.vips = VipResource(ctx.net, spec, owner=spec.priority == 255, announcer=ctx.announcer)
        self.commands = CommandResource(spec.name, spec.on_master, spec.on_backup)
        resources: list[Resource] = [self.vips]
        if spec.sync:
            resources.append(SyncResource(ctx.sync_role))
        if spec.on_master or spec.on_backup:
            resources.append(self.commands)
        self.group = ResourceGroup(resources, self._resource_failed, ctx.on_change)
        self.last_track: Track | None = None
        # The two halves of the tracking result, each renewed when its source changes (see Failover).
        self.link_track = Track()  # the instance's links: its own interface and the tracked ones
        self.service_track = Track()  # the tracked services, from the health engine's view
        self.reported_role = "init"  # the role of the last RoleChange (on_role)
        self._announced = float("-inf")  # when the VIPs were last announced again (announce)
        #: Adverts that asked for a re-announcement within ANNOUNCE_HOLDOFF of the last one, since then.
        self.held_announcements = 0
        self._tasks: set[asyncio.Task] = set()
        self._retry: asyncio.TimerHandle | None = None

    @property
    def link_faults(self) -> frozenset[str]:
        """The faults that are our own links being down (for ``Failover.link_fault``)."""
        return self.link_track.faults

    @property
    def role(self) -> str:
        """The current role's name, ``init`` before the state machine runs."""
        return self.instance.state.role.value if self.instance is not None else "init"

    # hooks called by VrrpInstance
    def announce(self, reason: str) -> None:
        """Re-announce our VIPs while master (see vrrp.state.Announce); only if we hold them, and at most
        once per ``ANNOUNCE_HOLDOFF``: a misconfigured peer that stays master below our priority sends
        such an advert every interval, and should cost neither a gratuitous ARP nor a log line each time."""
        if self.vips not in self.group.held:
            return
        now = self.ctx.clock()
        if now - self._announced < ANNOUNCE_HOLDOFF:
            self.held_announcements += 1
            return
        held = self.held_announcements
        more = f" ({held} more such adverts since the last announcement)" if held else ""
        log.info("failover: %s: %s; announcing %s again%s", self.spec.name, reason, ", ".join(self.spec.vips), more)
        self._announced, self.held_announcements = now, 0
        self.vips.announce()

    def want_resources(self, held: bool) -> None:
        """The state machine took or left the master role."""
        self.group.want(held)
        since = self.instance.takeover_since if held and self.instance is not None else None
        if since is not None:
            task = asyncio.create_task(self._measure_takeover(since))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _measure_takeover(self, since: float) -> None:
        """Once the VIPs are ours, report how long clients had no director since the master's last advert."""
        try:
            await self.group.settled()
        except TimeoutError:
            return  # the group is still working (a slow command): no honest figure to give
        if self.vips in self.group.held:
            seconds = self.ctx.clock() - since
            log.info("failover: %s took over %.3f s after the master's last advert", self.spec.name, seconds)
            self.ctx.on_takeover(f"{self.spec.name} vrid {self.spec.vrid}", seconds)

    def notify(self, role: Role, priority: int) -> None:
        """Run the notify hook for ``role`` in the background (keepalived's argument convention)."""
        argv = getattr(self.spec.notify, role.value, None)
        if not argv:
            return
        full = (*argv, "INSTANCE", self.spec.name, role.value.upper(), str(priority))
        task = asyncio.create_task(run_command(full, f"notify {self.spec.name} {role.value}", check=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def changed(self, state: VrrpState) -> None:
        """Publish the new state; report a role change once per edge (a priority or master change is not one)."""
        self.ctx.on_change()
        role = state.role.value
        if role == self.reported_role:
            return
        change = RoleChange(self.spec.name, role, self.reported_role, state.master)
        self.reported_role = role
        self.ctx.on_role(change)

    def _resource_failed(self, reason: str) -> None:
        if self.instance is None:
            return
        self.instance.feed(ResourceFault(reason))
        loop = asyncio.get_running_loop()
        self._retry = loop.call_later(self.ctx.resource_retry,
                                      lambda: self.instance and self.instance.feed(ResourceFault(None)))

    async def try_start(self) -> bool:
        """Open the socket and start the state machine; False (reason kept in ``problem``) if not yet possible."""
        if self.instance is not None:
            return True
        try:
            key = load_key(self.spec.auth_key_file) if self.spec.auth_key_file else None
            primary = self.ctx.primary_address(self.spec)
            self.transport = self.ctx.transport_factory(self.spec, primary, key)
        except (OSError, AuthError, LookupError) as exc:
            problem = str(exc)
            if problem != self.problem:
                log.error("failover: %s cannot start yet: %s", self.spec.name, problem)
            self.problem = problem
            self.ctx.on_change()
            return False
        self.problem = None
        if self.ctx.prepare_announcer is not None:
            try:
                self.ctx.prepare_announcer(self.spec.interface)
            except OSError as exc:  # retried when announcing; the VIPs still move
                log.warning("failover: %s: cannot open the announcement socket: %s", self.spec.name, exc)
        family = socket.AF_INET6 if self.spec.family == "inet6" else socket.AF_INET
        addrs = tuple(str(ipaddress.ip_interface(c).ip) for c in self.spec.vips)
        self.instance = VrrpInstance(self.spec.name, params_of(self.spec, primary), addrs, family,
                                     self.transport, self, clock=self.ctx.clock)
        if hasattr(self.transport, "fileno"):
            asyncio.get_running_loop().add_reader(self.transport.fileno(), self._readable)
        elif hasattr(self.transport, "attach"):
            self.transport.attach(self.instance)
        if self.last_track is not None:
            self.instance.feed(self.last_track)
        self.instance.start()
        log.info("failover: %s: VRID %d on %s from %s, priority %d, adverts every %.2f s", self.spec.name,
                 self.spec.vrid, self.spec.interface, primary, self.spec.priority, self.spec.advert_interval)
        return True

    def _readable(self) -> None:
        for _ in range(64):  # drain what is queued, but give the loop back
            got = self.transport.receive()
            if got is None:
                return
            self.instance.received(got.source, got.ttl, got.advert)

    def retrack(self) -> None:
        """Feed the tracking result of both halves (links, services) when it differs from the last one."""
        links, services = self.link_track, self.service_track
        self.track(Track(penalty=links.penalty + services.penalty, faults=links.faults | services.faults))

    def track(self, track: Track) -> None:
        """Feed a tracking result when it differs from the last one."""
        if track == self.last_track:
            return
        self.last_track = track
        if self.instance is not None:
            self.instance.feed(track)

    def retune(self, spec: VrrpInstanceSpec) -> None:
        """Apply settings that need no restart (priority, timers, hooks, tracking) in place."""
        self.spec = spec
        self.vips.spec = spec
        self.commands.on_master, self.commands.on_backup = spec.on_master, spec.on_backup
        if self.instance is not None:
            self.instance.params = params_of(spec, self.instance.params.primary)
            # Re-evaluate with the new constants: a master advertises its new priority at once.
            self.instance.feed(self.last_track or Track())
        self.last_track = None  # the failover retracks against the new track lists (Failover.update)

    async def stop(self) -> None:
        """Graceful: priority 0 if master, resources released, socket closed."""
        if self._retry is not None:
            self._retry.cancel()
        if self.instance is not None:
            await self.instance.stop()
            if hasattr(self.transport, "fileno"):
                asyncio.get_running_loop().remove_reader(self.transport.fileno())
        self.group.want(False)
        try:
            await self.group.settled()
        except TimeoutError:
            log.error("failover: %s: resources still releasing at exit", self.spec.name)
        await self.group.close()
        if self.transport is not None:
            self.transport.close()
        for task in list(self._tasks):  # let notify hooks finish (bounded by their own timeout)
            await asyncio.wait([task], timeout=COMMAND_TIMEOUT)

    def status(self, now_wall: float, now_mono: float) -> dict:
        """What ``lvsmail director status`` shows for this instance."""
        st = self.instance.state if self.instance else None
        return {
            "name": self.spec.name, "vrid": self.spec.vrid, "interface": self.spec.interface,
            "family": self.spec.family, "vips": list(self.spec.vips),
            "role": st.role.value if st else "init",
            "priority": st.priority if st else self.spec.priority, "configured_priority": self.spec.priority,
            "master": st.master if st else None,
            "since": now_wall - (now_mono - st.since) if st else None,
            "transitions": st.transitions if st else 0,
            "faults": list(st.faults) if st else ([self.problem] if self.problem else []),
            "advert_interval": self.spec.advert_interval, "preempt": self.spec.preempt,
            "held": [r.name for r in self.group.held],
            # What the receive guard kept from the state machine, by reason (lvsmail.vrrp.guard).
            "adverts_dropped": dict(self.instance.guard.dropped) if self.instance else {},
        }
