"""``lvsmail director start``: keep the kernel's IPVS table equal to the cluster file.

One loop owns every decision. Signal handlers only record intent (reload, stop)
and wake the loop; the loop reloads, repairs drift on a timer, and exits. A bad
file on reload is logged with all its errors and the running table is kept.

On exit the table stays in place, so restarting the director (an upgrade, a
crash) never interrupts mail; ``--flush-on-exit`` removes only the services
this director owns. Ownership is remembered in a small state file so that a
service removed from the file while the director was down is still cleaned up.

Under systemd (Type=notify) the director reports READY=1 once the table is
programmed, RELOADING=1/READY=1 around a reload, STOPPING=1, and a STATUS= line
(services, real servers up, VRRP role) when it changes. The watchdog's
WATCHDOG=1 comes from the main loop itself, between its steps: a loop that
hangs, even with the event loop still turning, stops the pings and systemd
restarts the director.

The Director is the composition root: it builds the parts (kernel table,
health engine, failover, sync role, local API) and hands each only the
callables it needs, never itself. It owns the event hub: the kernel table
publishes health and kernel events, the failover's role hook VRRP events, a
good reload its own, the local API the operators' actions.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from lvsmail.config import ConfigError, load_cluster
from lvsmail.console.api import start_api
from lvsmail.console.events import EventHub
from lvsmail.console.outages import DIRECTOR_TAKEOVER, REALSERVER_REMOVAL, OutageRecorder
from lvsmail.console.overrides import OverrideStore
from lvsmail.director import kernel_profile
from lvsmail.director.published import HealthFile, health_document, profile_document, reload_document, save, save_owned
from lvsmail.director.sync import SyncFollower, SyncRole
from lvsmail.director.table import DesiredSource, KernelTable, TableHooks, load_owned
from lvsmail.director.view import LiveView
from lvsmail.failover.hooks import FailoverHooks, FailoverOptions, RoleChange
from lvsmail.failover.instances import Failover
from lvsmail.health.alerts import Alerter
from lvsmail.health.engine import HealthEngine
from lvsmail.health.via_vip import prepare_kernel
from lvsmail.ipvs.desired import service_key
from lvsmail.ipvs.model import DestKey, IPVSBackend, Table
from lvsmail.net.sysctl import ProcSysctl, SysctlBackend
from lvsmail.registration.director import Membership
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import DEFAULT_STATE_DIR, StateDir
from lvsmail.systemd import Notifier, StatusReporter, status_line

log = logging.getLogger("lvsmail.director")


class Director:
    """The composition root: builds the director's parts, wires their hooks, and runs the one loop."""

    def __init__(self, config_path: str, backend: IPVSBackend, *, repair_interval: float = 5.0,
                 flush_on_exit: bool = False, state_dir: str = DEFAULT_STATE_DIR, engine_options: dict | None = None,
                 alerter_options: dict | None = None, sysctl: SysctlBackend | None = None,
                 notifier: Notifier | None = None, failover_options: FailoverOptions | None = None) -> None:
        self.config_path, self.backend = config_path, backend
        self.repair_interval, self.flush_on_exit = repair_interval, flush_on_exit
        self.files = StateDir.of(state_dir, config_path)  # every state file's name
        self.spec: ClusterSpec | None = None
        self.table: KernelTable | None = None  # the reconciler, the kernel lock, health transition batches
        self.engine: HealthEngine | None = None
        self.engine_options = engine_options or {}
        self.alerter: Alerter | None = None
        self.alerter_options = alerter_options or {}
        self.sysctl = sysctl if sysctl is not None else ProcSysctl()  # the kernel profile's sysctls
        self.sync_follower = SyncFollower(backend, self._save_profile)  # the IPVS sync daemon, as `sync:` asks
        self.failover: Failover | None = None  # while the file has a failover: section
        self.failover_options = failover_options or FailoverOptions()  # its network, clock, timers (tests fake)
        self.hub = EventHub()  # health, kernel, vrrp, reload and operator events, published where they happen
        self.api = None  # console.api's server (and its metrics exporter), once listening
        self.notifier = notifier if notifier is not None else Notifier(None)  # systemd's, or a silent one
        self.status_reporter = StatusReporter(self.notifier, self.status_line)  # systemd's STATUS= line, paced
        self.reload_note: str | None = None  # a rejected reload, shown in STATUS= until the next good one
        self.overrides = OverrideStore(self.files.overrides)  # operators' drain/weight, kept across restarts
        # Real servers' health for `director status`, rewritten at most once a second (see HealthFile).
        self.health_file = HealthFile(self.files.health, lambda: health_document(
            self.effective(), self.engine.states, self.engine.clock(), self.membership.published(self.spec)),
            lambda: self.engine.clock())
        self._reload, self._stop, self.ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.outages = OutageRecorder(self.files.outages)  # failovers measured, for `lvsmail availability`
        # Real servers that joined through the registration API, merged over the file's spec.
        self.membership = Membership(self.files.members, lambda: self.spec, self._members_changed,
                                     lambda address: member_connections(self.table, self.effective(), address))

    @property
    def sync(self) -> SyncRole | None:
        """The IPVS sync daemon role; None without a ``sync:`` section."""
        return self.sync_follower.role

    def request_reload(self) -> None:
        """Record that the file should be re-read (SIGHUP)."""
        self._reload.set()

    def request_stop(self) -> None:
        """Record that the daemon should exit (SIGTERM, SIGINT)."""
        self._stop.set()

    async def run(self) -> None:
        """Start, reload/repair until asked to stop, shut down (ConfigError, untouched kernel, on a bad file)."""
        await self.start()
        try:
            await self.loop()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        """Validate, program the kernel, start checks, failover and the API; then READY=1."""
        phases = _Phases()
        self.spec = load_cluster(self.config_path)
        owned, warning = load_owned(self.files)
        if warning:
            log.warning("director: %s", warning)
        self.table = KernelTable(self.backend, DesiredSource(
            spec=self.effective, health=lambda: self.engine.health() if self.engine is not None else None,
            overrides=lambda: {key: o.weight for key, o in self.overrides.items.items()},
        ), TableHooks(
            publish=self.hub.publish, save_owned=lambda keys: save_owned(self.files.owned, keys),
            on_removed=lambda what, seconds: _record(self.outages, REALSERVER_REMOVAL, seconds, what),
            on_batch=self._batch_applied, clock=lambda: self.engine.clock(),
            alert=lambda key, up, reason: self.alerter.transition(key, up, reason) if self.alerter else None,
        ), owned=owned)
        self.membership.load(self.spec)
        self.overrides.load()
        # Every check result feeds the metrics endpoint's latency histogram, once the API listens.
        self.engine = HealthEngine(self.effective(), self.table.transition, **self.engine_options,
                                   on_result=lambda key, res: self.api.metrics.observe(key, res) if self.api else None,
                                   hold=lambda: self.failover.link_fault() if self.failover is not None else None)
        self._set_alerter()
        prepare_kernel(self.spec, self.sysctl)
        await self._apply_kernel_profile()
        phases.done("config")
        # What `systemctl status` shows while the unit is "activating": a slow start says where it is.
        self.notifier.status(f"starting: programming the IPVS table ({_summary(self.spec)})")
        await self._sync(refresh=True, why="start")
        await self.sync_follower.start(self.spec)
        phases.done("table")
        self.notifier.status("starting: health checks and registration")
        self.engine.start()
        await self.membership.configure(self.spec)
        phases.done("checks")
        # Director failover (VRRP): after the first sync, so a director that wins has its table ready.
        if self.spec.failover is not None:
            self.notifier.status("starting: VRRP failover")
            await self._follow_failover(self.spec)
            phases.done("failover")
        # The local API and metrics (console.api) on a view of every part they may read, passed explicitly.
        self.api = await start_api(LiveView(
            state=self.files, config_path=self.config_path, overrides=self.overrides, spec=lambda: self.spec,
            effective=self.effective, membership=self.membership, engine=self.engine, table=self.table.dump,
            timeouts=self.table.timeouts, daemons=self.table.daemons,
            apply=lambda why: self._sync(refresh=False, why=why), sysctl=self.sysctl, sync_role=lambda: self.sync,
            failover=lambda: self.failover.status(peers=True) if self.failover is not None else None,
            request_reload=self.request_reload), self.hub)
        phases.done("api")
        self.ready.set()
        self.status_reporter.ready()
        log.info("director: %s in sync: %s; started in %s", self.spec.name, _summary(self.spec), phases)

    async def loop(self) -> None:
        """Reload when asked, repair every ``repair_interval``, ping the watchdog (a step, not a timer); until stop."""
        loop = asyncio.get_running_loop()
        ping = self.notifier.watchdog_interval
        next_ping, next_repair = loop.time(), loop.time() + self.repair_interval
        while not self._stop.is_set():
            now = loop.time()
            if ping is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + ping
            wait = next_repair - now if ping is None else min(next_repair, next_ping) - now
            await _first(self._reload.wait(), self._stop.wait(), timeout=max(0.0, wait))
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self.notifier.reloading()
                started = time.monotonic()  # CLOCK_MONOTONIC: `director reload` compares it with its own
                error = await self.reload()
                save(self.files.reload, reload_document(self.spec.name, started, time.monotonic(), error))
                self.status_reporter.ready()  # READY=1 ends the reload, accepted or not
            elif loop.time() >= next_repair:
                await self.sync_follower.retry()  # a refused sync role (interface not there yet) is tried again
                await self._sync(refresh=True, why="repair")
                await self.membership.retry()
            else:
                continue  # only the watchdog was due
            next_repair = loop.time() + self.repair_interval
            self._save_health()
            if self.alerter:
                self.alerter.remind({k: st.last_failure for k, st in self.engine.states.items() if not st.up})

    async def shutdown(self) -> None:
        """STOPPING=1, stop failover, API, registration and checks; release the table only with --flush-on-exit."""
        self.status_reporter.stopping()  # "stopping" stays the status line while checks and hooks wind down
        if self.failover is not None:  # graceful: masters advertise priority 0, the backup takes over at once
            await self.failover.stop()
        if self.api is not None:
            await self.api.close()
        await self.membership.close()
        await self.engine.stop()
        self._save_health(now=True)  # the last word on health, not up to a second old
        if self.alerter:
            await self.alerter.drain()
        if self.flush_on_exit:
            await self.sync_follower.stop()  # only here: a restarting director must not interrupt sync
            log.info("director: flushed %d owned services on exit", len(await self.table.release()))
        else:
            log.info("director: exiting, IPVS table left in place")

    async def reload(self) -> str | None:
        """Re-read the file and follow it; the problems of a rejected file (the running table is kept), or None."""
        try:
            new = load_cluster(self.config_path)
        except ConfigError as exc:
            log.error("director: reload rejected, running table kept:\n%s", exc)
            self.reload_note = f"reload at {time.strftime('%H:%M:%S')} rejected, running the previous file"
            return str(exc)
        self.reload_note, self.spec = None, new
        self.engine.update(self.effective())
        self._set_alerter()
        prepare_kernel(new, self.sysctl)
        await self._apply_kernel_profile()
        await self._sync(refresh=True, why="reload")
        await self.membership.configure(new)
        await self.sync_follower.reload(new)
        await self._follow_failover(new)
        log.info("director: reloaded %s: %s", new.name, _summary(new))
        self.hub.publish("reload", f"configuration reloaded: {len(new.services)} services")
        if self.api is not None:
            self.api.reloaded(new)
        return None

    def effective(self) -> ClusterSpec:
        """The file's spec with the real servers that joined through the registration API."""
        return self.membership.merged(self.spec)

    def status_line(self) -> str:
        """The STATUS= line: "3 services, 11/12 real servers up, VRRP MASTER" (and a rejected reload)."""
        return _status_text(self.effective(), self.engine.states if self.engine is not None else {},
                            self.failover.roles() if self.failover is not None else {}, self.reload_note)

    async def _follow_failover(self, spec: ClusterSpec) -> None:
        """Start, retune or stop the failover as ``spec`` says; it reaches this director only through hooks."""
        if spec.failover is None:
            if self.failover is not None:
                await self.failover.stop()
            self.failover = None
        elif self.failover is not None:
            await self.failover.update(spec.failover, spec)
        else:
            self.failover = Failover(spec.failover, spec, FailoverHooks(
                publish=lambda status: save(self.files.failover, status), on_role=self._role_changed,
                on_takeover=lambda what, seconds: _record(self.outages, DIRECTOR_TAKEOVER, seconds, what),
                sync_role=lambda: self.sync, service_up=self.engine.service_up), self.failover_options)
            await self.failover.start()

    def _role_changed(self, change: RoleChange) -> None:
        """A VRRP instance changed role: one event per edge, and systemd's status line follows."""
        self.hub.publish("vrrp", f"{change.instance}: {change.previous} -> {change.role}", instance=change.instance,
                         role=change.role, previous=change.previous, master=change.master)
        self.status_reporter.publish()

    async def _members_changed(self, services: set[str]) -> None:
        """A member joined, drained or left: follow it in the health checks and the kernel before replying."""
        self.engine.update(self.effective())
        if self.failover is not None:  # instances tracking these services look at them again
            self.failover.services_changed(services)
        # A full sync, not only the members' services: a check through the VIP adds a probe service per member.
        await self._sync(refresh=True, why=f"members of {', '.join(sorted(services))}")
        self._save_health(now=True)  # status shows a join or leave at once

    def _batch_applied(self, names: set[str]) -> None:
        """Health transitions reached the kernel (or were refused): retrack the failover, publish the health."""
        if self.failover is not None:
            self.failover.services_changed(names)
        self._save_health()

    async def _sync(self, *, refresh: bool, why: str) -> None:
        """One full sync of the kernel table (start, repair, reload, members, operators), then the profile file."""
        if await self.table.sync(why, refresh=refresh) is not None:
            self._save_profile()

    def _set_alerter(self) -> None:
        """(Re)create the alerter when the file's alerts block is new or changed."""
        self.alerter = _alerter(self.spec, self.alerter, self.alerter_options)

    async def _apply_kernel_profile(self) -> None:
        """Set the sysctls the file's ``kernel:`` section manages; failures are logged, status flags them."""
        await kernel_profile.apply_for(self.spec, self.backend, self.sysctl)

    def _save_profile(self) -> None:
        """Publish the kernel profile and the sync role for ``status``."""
        save(self.files.kernel, profile_document(self.spec, kernel_profile.wanted(self.spec),
                                                 self.sync.status() if self.sync is not None else None))

    def _save_health(self, *, now: bool = False) -> None:
        """Publish health for ``status`` (at most once a second, unless ``now``) and systemd's status line."""
        self.status_reporter.publish()  # the same moments change systemd's status line
        self.health_file.save(now=now)


def _alerter(spec: ClusterSpec, current: Alerter | None, options: dict) -> Alerter | None:
    """The alerter of ``spec``'s ``alerts:`` block: ``current`` while the block is unchanged, a new one otherwise."""
    if spec.alerts is None:
        return None
    if current is not None and current.spec == spec.alerts:
        return current
    return Alerter(spec.alerts, spec.name, **options)


def _record(outages: OutageRecorder, kind: str, seconds: float, detail: str) -> None:
    """Keep one measured failover for the availability report; a write failure is logged, not fatal."""
    try:
        outages.record(kind, max(0.0, seconds), detail=detail)
    except (OSError, ValueError) as exc:
        log.warning("director: cannot record %s of %.3f s: %s", kind, seconds, exc)


def _status_text(spec: ClusterSpec, states: dict, roles: dict[str, str], note: str | None) -> str:
    """systemd's status line of ``spec`` with the engine's ``states``, the VRRP ``roles`` and a reload's ``note``."""
    # A real server without a check is never taken out: it counts as up, as it is in the kernel.
    health = [getattr(states.get((svc.name, rs.address, rs.port)), "up", True)
              for svc in spec.services for rs in svc.realservers]
    return status_line(len(spec.services), sum(health), len(health), roles, note)


async def member_connections(table: KernelTable, spec: ClusterSpec, address: str) -> dict[str, tuple[int, int]]:
    """(active, inactive) connections of one member per service of ``spec``, from the kernel's counters."""
    kernel: Table = await table.dump(counters=True)
    out = {}
    for svc in spec.services:
        for rs in svc.realservers:
            if rs.address == address:
                dest = kernel.get(service_key(svc))
                entry = dest.dests.get(DestKey(rs.address, rs.port)) if dest else None
                out[svc.name] = (entry.active, entry.inactive) if entry else (0, 0)
    return out


async def serve(director: Director) -> None:
    """Run a director with signal handlers installed (the foreground daemon)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, director.request_reload)
    loop.add_signal_handler(signal.SIGTERM, director.request_stop)
    loop.add_signal_handler(signal.SIGINT, director.request_stop)
    try:
        await director.run()
    finally:
        await director.backend.close()


async def _first(*aws, timeout: float) -> bool:
    """Wait for the first awaitable or the timeout; True if one finished."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    return bool(done)


class _Phases:
    """How long each start-up phase took, for the log: a slow start (a loaded machine, a slow import)
    shows where the time went, e.g. "4.1 s (config 0.3, table 1.2, checks 0.1, failover 2.4, api 0.1)"."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.parts: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.parts.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return (f"{self.last - self.t0:.1f} s (" + ", ".join(f"{n} {d:.1f}" for n, d in self.parts) + ")")


def _summary(spec: ClusterSpec) -> str:
    reals = sum(len(s.realservers) for s in spec.services)
    return f"{len(spec.services)} services, {reals} real servers"

