"""The director's failover: VRRP instances, and the resource group each one moves.

Per instance, an ordered group of resources is acquired when the instance
becomes master and released in reverse order when it leaves: its VIPs (added
to the interface, then announced with gratuitous ARP / unsolicited NA), the
IPVS sync daemon role when the instance says ``sync: true``, and the
``on_master`` / ``on_backup`` commands — the director's version of the seed's
failover domain that moved an address, a file system and a service together.
A step that fails puts the instance in Fault (it advertises priority 0 so the
peer takes over) and releases what was already taken; after
``RESOURCE_RETRY`` seconds the fault is cleared and the instance may try again.

Tracking is polled (``TRACK_INTERVAL``): the instance's own interface and the
tracked ones (operationally up: administratively up with carrier), and the
tracked services (at least one real server up according to the health
engine). A failed track either forces Fault or lowers the priority by its
weight, as keepalived's ``track_interface`` / ``track_script`` weights do.

Interface changes go through :mod:`lvsmail.net` on one worker thread: the
netlink library runs its own event loop and cannot be called from ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from lvsmail.console.outages import DIRECTOR_TAKEOVER
from lvsmail.spec import ClusterSpec, FailoverSpec, VrrpInstanceSpec
from lvsmail.vrrp import announce
from lvsmail.vrrp.auth import AuthError, load_key
from lvsmail.vrrp.instance import VrrpInstance
from lvsmail.vrrp.packet import centiseconds
from lvsmail.vrrp.state import ResourceFault, Role, Track, VrrpParams, VrrpState

log = logging.getLogger("lvsmail.failover")

#: Seconds between polls of tracked interfaces and services.
TRACK_INTERVAL = 0.2
#: A failed health check asks whether our own links are down; a link reading older than this is renewed.
LINK_FRESH = 0.05
#: Seconds between two re-announcements a lower-priority master's adverts ask for (keepalived paces
#: its own with ``vrrp_garp_lower_prio_delay``).
ANNOUNCE_HOLDOFF = 5.0
#: Seconds a resource failure keeps an instance in Fault before it may try again.
RESOURCE_RETRY = 30.0
#: Seconds an ``on_master`` / ``on_backup`` command or a notify hook may run.
COMMAND_TIMEOUT = 60.0


class Resource(Protocol):
    """Something a master holds: acquired in order on becoming master, released in reverse on leaving."""

    name: str

    async def acquire(self) -> None:
        """Take the resource; raise to refuse (the instance goes to Fault)."""

    async def release(self) -> None:
        """Give the resource back; raise only if it could not be (logged, the rest is still released)."""


# -- the network, from a thread of its own -------------------------------------------

class ThreadedNet:
    """A NetBackend used from asyncio: every call runs on one worker thread that owns the backend."""

    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="failover-net")
        self._factory = factory or _rtnl
        self._backend = None

    def _run(self, method: str, *args):
        if self._backend is None:
            self._backend = self._factory()
        return getattr(self._backend, method)(*args)

    async def call(self, method: str, *args):
        """Run ``backend.method(*args)`` on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, method, *args)

    def close(self) -> None:
        """Close the backend on its thread and stop the thread."""
        def close() -> None:
            if self._backend is not None and hasattr(self._backend, "close"):
                self._backend.close()
        self._pool.submit(close).result(timeout=5)
        self._pool.shutdown(wait=True)


def _rtnl():
    from lvsmail.net.iproute import RtnlAddresses

    return RtnlAddresses()


# -- resources ------------------------------------------------------------------------

class VipResource:
    """The instance's VIPs on its interface, announced once added.

    For an address owner (priority 255) the addresses are the interface's own:
    they must be present, are announced, and are never removed.
    """

    def __init__(self, net: ThreadedNet, spec: VrrpInstanceSpec, owner: bool = False,
                 announcer: Callable[..., Any] | None = None, direct: Any = None) -> None:
        self.name = "vips " + ",".join(spec.vips)
        self.net, self.spec, self.owner = net, spec, owner
        self.direct = direct  # RtnlAddresses: add/remove from the event loop, no worker-thread round trip
        self.announcer = announcer or announce.Announcer().announce
        self._announcing: asyncio.Task | None = None

    async def acquire(self) -> None:
        """Add each VIP (one already there is fine), then start the announcements."""
        if self.owner:
            present = set(await self.net.call("addresses", self.spec.interface))
            for cidr in self.spec.vips:
                if cidr not in present:
                    raise OSError(errno.EADDRNOTAVAIL, f"priority 255 claims to own {cidr} but it is not on "
                                                       f"{self.spec.interface}")
        else:
            for cidr in self.spec.vips:
                try:  # no listing first: every millisecond here delays the takeover
                    await self._change("add_address", cidr)
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
        self.announce()

    def announce(self) -> None:
        """Gratuitous ARP / unsolicited NA for every VIP, ``garp.count`` times, and the same again
        ``garp.refresh`` seconds later; a new call starts over, releasing the VIPs stops both."""
        if self._announcing is not None:
            self._announcing.cancel()
        self._announcing = asyncio.create_task(self._announce_sets())

    async def _announce_sets(self) -> None:
        """The first set at once; the second in case a peer that was master for a moment announced after us."""
        addrs = tuple(str(ipaddress.ip_interface(c).ip) for c in self.spec.vips)
        garp = self.spec.garp
        await self.announcer(self.spec.interface, addrs, garp.count, garp.interval)
        if garp.refresh > 0:
            await asyncio.sleep(garp.refresh)
            await self.announcer(self.spec.interface, addrs, garp.count, garp.interval)

    async def release(self) -> None:
        """Stop announcing and remove the VIPs (an address already gone is fine)."""
        if self._announcing is not None:
            self._announcing.cancel()
            self._announcing = None
        if self.owner:
            return
        await self.clear()

    async def clear(self) -> None:
        """Remove every VIP of the instance that is on the interface (also left-overs of a killed director)."""
        present = set(await self.net.call("addresses", self.spec.interface))
        for cidr in self.spec.vips:
            if cidr in present:
                await self._change("del_address", cidr)

    async def _change(self, method: str, cidr: str) -> None:
        """Add or remove one address, directly when possible."""
        if self.direct is not None:
            getattr(self.direct, method)(self.spec.interface, cidr)
        else:
            await self.net.call(method, self.spec.interface, cidr)


class SyncResource:
    """The IPVS sync daemon role: master daemon while we hold the VIPs, backup daemon otherwise."""

    name = "sync role"

    def __init__(self, role: Callable[[], Any]) -> None:
        self.role = role  # the director's SyncRole (None when the file has no sync: section)

    async def acquire(self) -> None:
        """Run the master sync daemon."""
        sync = self.role()
        if sync is None:
            raise RuntimeError("sync: true but the cluster file has no sync: section")
        await sync.become_master()

    async def release(self) -> None:
        """Back to the backup sync daemon, receiving the new master's connections."""
        sync = self.role()
        if sync is not None:
            await sync.become_backup()


class CommandResource:
    """``on_master`` commands run in order on acquiring; ``on_backup`` commands on releasing."""

    def __init__(self, name: str, on_master: tuple[tuple[str, ...], ...], on_backup: tuple[tuple[str, ...], ...],
                 env: dict[str, str] | None = None) -> None:
        self.name = f"commands of {name}"
        self.on_master, self.on_backup, self.env = on_master, on_backup, env

    async def acquire(self) -> None:
        """Each on_master command must succeed."""
        for argv in self.on_master:
            await run_command(argv, self.name, check=True)

    async def release(self) -> None:
        """Every on_backup command runs, even after one fails (the first failure is raised at the end)."""
        failed: Exception | None = None
        for argv in self.on_backup:
            try:
                await run_command(argv, self.name, check=True)
            except Exception as exc:  # keep releasing; report once
                failed = failed or exc
        if failed:
            raise failed


async def run_command(argv: tuple[str, ...], what: str, *, check: bool, timeout: float = COMMAND_TIMEOUT) -> int:
    """Run a command without a shell, log its output, return its status (raise if ``check`` and not 0)."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        log.error("failover: %s: cannot run %s: %s", what, argv[0], exc.strerror)
        if check:
            raise
        return -1
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.error("failover: %s: %s killed after %.0f s", what, argv[0], timeout)
        if check:
            raise RuntimeError(f"{argv[0]} timed out after {timeout:.0f} s") from None
        return -1
    text = out.decode(errors="replace").strip()
    if text:
        log.info("failover: %s: %s: %s", what, argv[0], text)
    if proc.returncode != 0:
        log.error("failover: %s: %s exited with %d", what, argv[0], proc.returncode)
        if check:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
    return proc.returncode


class ResourceGroup:
    """Acquire in order, release in reverse; one worker so the two never interleave.

    ``want(True/False)`` returns at once; the worker converges to the latest wish.
    On a failed acquire, what was taken is released and ``on_failure(reason)`` is called.
    """

    def __init__(self, resources: list[Resource], on_failure: Callable[[str], None],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.resources = resources
        self.on_failure = on_failure
        self.on_change = on_change
        self.held: list[Resource] = []
        self._want = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    def want(self, held: bool) -> None:
        """Ask for the group to be held (master) or released."""
        self._want = held
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work())

    async def settled(self, timeout: float = COMMAND_TIMEOUT + 5) -> None:
        """Wait until the group matches the latest wish."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def _work(self) -> None:
        while True:
            self._wake.clear()
            if self._want and len(self.held) < len(self.resources):
                resource = self.resources[len(self.held)]
                try:
                    await resource.acquire()
                except Exception as exc:  # any failure: roll back, report, and let the FSM go to Fault
                    reason = f"{resource.name}: {exc}"
                    log.error("failover: acquiring %s", reason)
                    self._want = False
                    await self._release_all()
                    self.on_failure(reason)
                    continue
                self.held.append(resource)
                log.info("failover: acquired %s", resource.name)
                self.on_change()
                continue
            if not self._want and self.held:
                await self._release_all()
                continue
            self._idle.set()
            await self._wake.wait()
            self._idle.clear()

    async def _release_all(self) -> None:
        """Release everything held, last acquired first, carrying on past failures."""
        while self.held:
            resource = self.held.pop()
            try:
                await resource.release()
                log.info("failover: released %s", resource.name)
            except Exception as exc:  # keep releasing the rest; the operator sees why
                log.error("failover: releasing %s: %s", resource.name, exc)
            self.on_change()

    async def close(self) -> None:
        """Stop the worker (after ``settled``)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


# -- one instance ---------------------------------------------------------------------

#: Settings that can change on reload without restarting the instance.
_RETUNABLE = ("priority", "advert_interval", "preempt", "preempt_delay", "notify", "track_interfaces",
              "track_services", "garp", "on_master", "on_backup")


def params_of(spec: VrrpInstanceSpec, primary: str) -> VrrpParams:
    """The state machine's constants from the instance's settings."""
    return VrrpParams(vrid=spec.vrid, priority=spec.priority, advert_interval=centiseconds(spec.advert_interval),
                      primary=primary, preempt=spec.preempt, preempt_delay=spec.preempt_delay)


class Runner:
    """One instance: its socket, state machine task, resource group, notify hooks and tracking."""

    def __init__(self, failover: "Failover", spec: VrrpInstanceSpec) -> None:
        self.failover = failover
        self.spec = spec
        self.instance: VrrpInstance | None = None
        self.transport = None
        self.problem: str | None = None  # why the instance could not start yet
        self.vips = VipResource(failover.net, spec, owner=spec.priority == 255, announcer=failover.announcer,
                                direct=failover.direct)
        self.commands = CommandResource(spec.name, spec.on_master, spec.on_backup)
        resources: list[Resource] = [self.vips]
        if spec.sync:
            resources.append(SyncResource(failover.sync_role))
        if spec.on_master or spec.on_backup:
            resources.append(self.commands)
        self.group = ResourceGroup(resources, self._resource_failed, failover.save)
        self.last_track: Track | None = None
        self.link_faults: frozenset[str] = frozenset()  # the faults of last_track that are our own links being down
        self._announced = float("-inf")  # when the VIPs were last announced again (announce)
        self._unannounced = 0  # adverts that asked for it since, within the hold-off
        self._tasks: set[asyncio.Task] = set()
        self._retry: asyncio.TimerHandle | None = None

    # hooks called by VrrpInstance
    def announce(self, reason: str) -> None:
        """Re-announce our VIPs while master (see vrrp.state.Announce); only if we hold them, and at most
        once per ``ANNOUNCE_HOLDOFF``: a misconfigured peer that stays master below our priority sends
        such an advert every interval, and should cost neither a gratuitous ARP nor a log line each time."""
        if self.vips not in self.group.held:
            return
        now = self.failover.clock()
        if now - self._announced < ANNOUNCE_HOLDOFF:
            self._unannounced += 1
            return
        more = f" ({self._unannounced} more such adverts since the last announcement)" if self._unannounced else ""
        log.info("failover: %s: %s; announcing %s again%s", self.spec.name, reason, ", ".join(self.spec.vips), more)
        self._announced, self._unannounced = now, 0
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
            seconds = self.failover.clock() - since
            log.info("failover: %s took over %.3f s after the master's last advert", self.spec.name, seconds)
            self.failover.on_takeover(f"{self.spec.name} vrid {self.spec.vrid}", seconds)

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
        """Publish the new role."""
        self.failover.save()

    def _resource_failed(self, reason: str) -> None:
        if self.instance is None:
            return
        self.instance.feed(ResourceFault(reason))
        loop = asyncio.get_running_loop()
        self._retry = loop.call_later(self.failover.resource_retry,
                                      lambda: self.instance and self.instance.feed(ResourceFault(None)))

    async def try_start(self) -> bool:
        """Open the socket and start the state machine; False (reason kept in ``problem``) if not yet possible."""
        if self.instance is not None:
            return True
        try:
            key = load_key(self.spec.auth_key_file) if self.spec.auth_key_file else None
            primary = await self.failover.primary_address(self.spec)
            self.transport = self.failover.transport_factory(self.spec, primary, key)
        except (OSError, AuthError, LookupError) as exc:
            problem = str(exc)
            if problem != self.problem:
                log.error("failover: %s cannot start yet: %s", self.spec.name, problem)
            self.problem = problem
            self.failover.save()
            return False
        self.problem = None
        if self.failover._announcer is not None:
            try:
                self.failover._announcer.prepare(self.spec.interface)
            except OSError as exc:  # retried when announcing; the VIPs still move
                log.warning("failover: %s: cannot open the announcement socket: %s", self.spec.name, exc)
        family = socket.AF_INET6 if self.spec.family == "inet6" else socket.AF_INET
        addrs = tuple(str(ipaddress.ip_interface(c).ip) for c in self.spec.vips)
        self.instance = VrrpInstance(self.spec.name, params_of(self.spec, primary), addrs, family,
                                     self.transport, self, clock=self.failover.clock)
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
        self.last_track = None  # recompute on the next poll against the new track lists

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


# -- the director's failover ----------------------------------------------------------

def _socket_transport(spec: VrrpInstanceSpec, primary: str, key: bytes | None):
    from lvsmail.vrrp.io import VrrpSocket

    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
    return VrrpSocket(spec.interface, family, primary, peers=spec.unicast_peers, key=key)


class Failover:
    """Every VRRP instance of one director, their tracking, and the state file."""

    def __init__(self, spec: FailoverSpec, cluster: ClusterSpec, *, state_file: Path | None = None,
                 sync_role: Callable[[], Any] = lambda: None,
                 health: Callable[[], dict] = dict,
                 net: ThreadedNet | None = None,
                 transport_factory: Callable[..., Any] = _socket_transport,
                 announcer: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 track_interval: float = TRACK_INTERVAL,
                 resource_retry: float = RESOURCE_RETRY,
                 on_takeover: Callable[[str, float], None] = lambda detail, seconds: None) -> None:
        self.spec = spec
        self.on_takeover = on_takeover  # called with (what, seconds) when a backup instance has taken over
        self.cluster = cluster
        self.state_file = state_file
        self.sync_role = sync_role
        self.health = health  # the health engine's states: (service, address, port) -> HealthState
        self.net = net or ThreadedNet()
        self.direct = None if net is not None else _rtnl()  # with a given (fake) backend, everything goes there
        # Polling gets its own thread and netlink socket, so a takeover never queues behind a link dump.
        self.track_net = ThreadedNet(net._factory) if net is not None else ThreadedNet()
        self.transport_factory = transport_factory
        # One set of announcement sockets for the director, opened when an instance starts.
        self._announcer = announce.Announcer() if announcer is None else None
        self.announcer = announcer or self._announcer.announce
        self.clock = clock
        self.track_interval = track_interval
        self.resource_retry = resource_retry
        self.runners: dict[str, Runner] = {}
        self._poller: asyncio.Task | None = None
        self._links_read = float("-inf")  # when link states were last read (tracking poll or link_fault)
        self._links_unreadable = False  # link_fault's last read failed (logged once until one succeeds)

    async def start(self) -> None:
        """Clear VIPs a killed predecessor left behind, start every instance, start tracking."""
        for inst in self.spec.instances:
            await self._add(inst)
        self._poller = asyncio.create_task(self._poll(), name="failover-track")

    async def _add(self, inst: VrrpInstanceSpec) -> None:
        runner = Runner(self, inst)
        self.runners[inst.name] = runner
        if inst.priority != 255:
            try:
                await runner.vips.clear()  # we are not master yet: nothing of ours may be on the link
            except OSError as exc:
                log.error("failover: %s: cannot clear left-over VIPs: %s", inst.name, exc)
        await self._track_one(runner, await self._link_states())
        await runner.try_start()

    async def update(self, spec: FailoverSpec, cluster: ClusterSpec) -> None:
        """Reload: keep unchanged instances, retune changed settings in place, restart the rest."""
        self.cluster = cluster
        new = {i.name: i for i in spec.instances}
        for name in [n for n in self.runners if n not in new]:
            log.info("failover: %s removed by reload", name)
            await self.runners.pop(name).stop()
        for name, inst in new.items():
            old = self.runners.get(name)
            if old is None:
                log.info("failover: %s added by reload", name)
                await self._add(inst)
            elif old.spec == inst:
                continue
            elif all(getattr(old.spec, f) == getattr(inst, f) for f in _fields(inst) if f not in _RETUNABLE) \
                    and (old.spec.priority == 255) == (inst.priority == 255):
                log.info("failover: %s retuned by reload", name)
                old.retune(inst)
            else:
                log.info("failover: %s changed by reload: restarting it", name)
                await self.runners.pop(name).stop()
                await self._add(inst)
        self.spec = spec
        self.save()

    async def stop(self) -> None:
        """Graceful shutdown: every master advertises priority 0 and releases its group."""
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
        self.save()
        if self._announcer is not None:
            self._announcer.close()
        if self.direct is not None:
            self.direct.close()
        await asyncio.get_running_loop().run_in_executor(None, self.net.close)
        await asyncio.get_running_loop().run_in_executor(None, self.track_net.close)

    async def primary_address(self, spec: VrrpInstanceSpec) -> str:
        """The interface's own address the adverts come from: its first non-VIP IPv4, or its IPv6 link-local."""
        vips = {str(ipaddress.ip_interface(c).ip) for i in self.spec.instances for c in i.vips}
        for cidr in await self.net.call("addresses", spec.interface):
            ip = ipaddress.ip_interface(cidr).ip
            if spec.family == "inet" and ip.version == 4 and str(ip) not in vips:
                return str(ip)
            if spec.family == "inet6" and ip.version == 6 and ip.is_link_local:
                return str(ip)
        kind = "IPv4 address" if spec.family == "inet" else "IPv6 link-local address"
        raise LookupError(f"{spec.interface} has no {kind} of its own to send adverts from")

    async def _link_states(self) -> dict[str, bool]:
        try:
            return await self.track_net.call("link_states")
        except OSError as exc:
            log.error("failover: cannot read link states: %s", exc)
            return {}

    async def _poll(self) -> None:
        """Re-evaluate tracking, and retry instances that could not start, every ``track_interval``."""
        while True:
            await asyncio.sleep(self.track_interval)
            links = await self._link_states()
            if links:
                self._links_read = self.clock()
            for runner in list(self.runners.values()):
                await self._track_one(runner, links)
                if runner.instance is None:
                    await runner.try_start()

    async def _track_one(self, runner: Runner, links: dict[str, bool]) -> None:
        """Tracking result of one instance: faults and total weight of what is down."""
        spec = runner.spec
        runner.link_faults = _link_faults(spec, links)
        faults = set(runner.link_faults)
        penalty = sum(t.weight for t in spec.track_interfaces if t.weight and not links.get(t.name, False))
        if spec.track_services:
            states = self.health() or {}
            known = {s.name for s in self.cluster.services}
            for t in spec.track_services:
                ups = [st.up for (service, _a, _p), st in states.items() if service == t.name]
                if t.name not in known:
                    down = f"tracked service {t.name} is not in the cluster file"
                elif ups and not any(ups):
                    down = f"no real server of service {t.name} is up"
                else:
                    continue  # some server up, or the service is not checked (nothing says it is down)
                if t.weight:
                    penalty += t.weight
                else:
                    faults.add(down)
        runner.track(Track(penalty=penalty, faults=frozenset(faults)))

    def link_fault(self) -> str | None:
        """Why this director serves no VIP at all because its own links are down, or None.

        Only when every instance is in fault for an interface (its own, or one
        tracked without a weight): the peer then holds every VIP, and this
        director's table carries no traffic until a link returns. The health
        engine asks on a failed check, so that checks failing only because our
        links are down do not empty the table the director takes back on
        failback. The answer must not lag the link: a check can fail within
        the first moment of an outage, before the next tracking poll, so the
        link states are read afresh when the last reading is older than
        ``LINK_FRESH``.
        """
        if self.direct is not None and self.clock() - self._links_read > LINK_FRESH:
            try:
                links = self.direct.link_states()
            except OSError as exc:
                # Asked on every failed check: say it once, and try again after LINK_FRESH, not per check.
                if not self._links_unreadable:
                    log.error("failover: cannot read link states (the last reading stands): %s", exc)
                self._links_unreadable = True
                self._links_read = self.clock()
            else:
                if self._links_unreadable:
                    log.warning("failover: link states can be read again")
                self._links_unreadable = False
                self._note_links(links)
        faults = [r.link_faults for r in self.runners.values()]
        if not faults or not all(faults):
            return None
        return "; ".join(sorted(frozenset().union(*faults)))

    def _note_links(self, links: dict[str, bool]) -> None:
        """Remember which instances' links are down (for ``link_fault``)."""
        self._links_read = self.clock()
        for runner in self.runners.values():
            runner.link_faults = _link_faults(runner.spec, links)

    def status(self) -> dict:
        """Every instance's role, priority, master, since, transitions, faults."""
        now_wall, now_mono = time.time(), self.clock()
        return {"cluster": self.cluster.name, "written": now_wall,
                "instances": [r.status(now_wall, now_mono) for r in self.runners.values()]}

    def save(self) -> None:
        """Publish the status in the state file (on every transition and resource change)."""
        if self.state_file is None:
            return
        from lvsmail.director.daemon import _write_json

        _write_json(self.state_file, self.status())


def _link_faults(spec: VrrpInstanceSpec, links: dict[str, bool]) -> frozenset[str]:
    """The faults that put an instance in FAULT because a link is down: its interface, or one tracked
    without a weight (a weighted one only lowers the priority)."""
    faults = set()
    if not links.get(spec.interface, False):
        faults.add(f"interface {spec.interface} down")
    faults.update(f"tracked interface {t.name} down" for t in spec.track_interfaces
                  if not t.weight and not links.get(t.name, False))
    return frozenset(faults)


def _fields(spec: VrrpInstanceSpec) -> list[str]:
    from dataclasses import fields

    return [f.name for f in fields(spec)]


def for_director(director) -> Failover:
    """The failover of a running Director (its file's ``failover:`` section, its sync role and health)."""
    options = dict(director.failover_options)
    return Failover(
        director.spec.failover, director.spec,
        state_file=director.files.failover,
        sync_role=lambda: director.sync,
        health=lambda: director.engine.states if director.engine else {},
        on_takeover=lambda what, seconds: director.record_outage(DIRECTOR_TAKEOVER, seconds, what),
        **options,
    )
