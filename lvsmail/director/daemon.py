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
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from lvsmail.config import ConfigError, load_cluster
from lvsmail.director import kernel_profile
from lvsmail.console.outages import DIRECTOR_TAKEOVER, REALSERVER_REMOVAL, OutageRecorder
from lvsmail.console.overrides import OverrideStore
from lvsmail.director.published import HealthFile, health_document, profile_document, reload_document, save, save_owned
from lvsmail.director.reconcile import Reconciler
from lvsmail.director.sync import SyncRole, initial_role
from lvsmail.director.table import DesiredSource, KernelTable, TableHooks, load_owned
from lvsmail.failover.hooks import FailoverHooks, FailoverOptions, RoleChange
from lvsmail.failover.instances import Failover
from lvsmail.health.alerts import Alerter
from lvsmail.health.engine import HealthEngine
from lvsmail.health.via_vip import prepare_kernel
from lvsmail.ipvs.desired import service_key
from lvsmail.ipvs.model import IPVSBackend, IPVSError
from lvsmail.net.sysctl import ProcSysctl, SysctlBackend
from lvsmail.registration.director import Membership
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import DEFAULT_STATE_DIR, StateDir
from lvsmail.systemd import STATUS_PERIOD, Notifier, Pacer, status_line

log = logging.getLogger("lvsmail.director")


class Director:
    """The director daemon's state: current spec, reconciler, pending intents."""

    def __init__(
        self,
        config_path: str,
        backend: IPVSBackend,
        *,
        repair_interval: float = 5.0,
        flush_on_exit: bool = False,
        state_dir: str = DEFAULT_STATE_DIR,
        engine_options: dict | None = None,
        alerter_options: dict | None = None,
        sysctl: SysctlBackend | None = None,
        notifier: Notifier | None = None,
        failover_options: FailoverOptions | None = None,
    ) -> None:
        self.config_path = config_path
        self.backend = backend
        self.repair_interval = repair_interval
        self.flush_on_exit = flush_on_exit
        self.state_dir = Path(state_dir)
        self.files = StateDir.of(state_dir, config_path)  # every state file's name
        self.spec: ClusterSpec | None = None
        self.table: KernelTable | None = None  # the reconciler, the kernel lock, health transition batches
        self.reconciler: Reconciler | None = None  # self.table's, for events.attach until it is rewired
        self.engine: HealthEngine | None = None
        self.engine_options = engine_options or {}
        self.alerter: Alerter | None = None
        self.alerter_options = alerter_options or {}
        self.sysctl = sysctl if sysctl is not None else ProcSysctl()  # the kernel profile's sysctls
        self.sync: SyncRole | None = None  # the IPVS sync daemon role; None without a sync: section
        self.failover: Failover | None = None  # while the file has a failover: section
        # The failover's network, clock and timers: the real ones unless a test or benchmark passes others.
        self.failover_options = failover_options if failover_options is not None else FailoverOptions()
        self.api = None  # director.api's server, once running
        self.notifier = notifier if notifier is not None else Notifier(None)  # systemd's, or a silent one
        self._status_sent: str | None = None  # the last STATUS= line, to send only changes
        self._status_pacer = Pacer(STATUS_PERIOD)
        self._status_later: asyncio.TimerHandle | None = None
        self._status_closed = False  # set once STOPPING=1 is sent
        self._reload_note: str | None = None  # a rejected reload, shown in STATUS= until the next good one
        # Operators' drain/weight (director.api), kept across restarts and applied to every desired table.
        self.overrides = OverrideStore(self.files.overrides)
        # Real servers' health for `director status`, rewritten at most once a second (see HealthFile).
        self.health_file = HealthFile(self.files.health, self._health_document, lambda: self.engine.clock())
        self._kernel: asyncio.Lock | None = None  # self.table's lock, for director.snapshot until it is rewired
        self._reload = asyncio.Event()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        # Failovers this director measured, for `lvsmail availability`.
        self.outages = OutageRecorder(self.files.outages)
        # Real servers that joined through the registration API, merged over the file's spec.
        self.membership = Membership(self.files.members,
                                     lambda: self.spec, self._members_changed, self._member_connections)

    def request_reload(self) -> None:
        """Record that the file should be re-read (SIGHUP)."""
        self._reload.set()

    def request_stop(self) -> None:
        """Record that the daemon should exit (SIGTERM, SIGINT)."""
        self._stop.set()

    async def run(self) -> None:
        """Validate, program the kernel, then reload/repair until asked to stop.

        Raises ConfigError before touching the kernel when the initial file is bad.
        """
        phases = _Phases()
        self.spec = load_cluster(self.config_path)
        owned, warning = load_owned(self.files)
        if warning:
            log.warning("director: %s", warning)
        self.table = KernelTable(self.backend, DesiredSource(
            spec=self.effective, health=lambda: self.engine.health() if self.engine is not None else None,
            overrides=lambda: {key: o.weight for key, o in self.overrides.items.items()},
        ), TableHooks(
            publish=lambda *a, **kw: None,  # events.attach still wraps the engine's and reconciler's hooks
            save_owned=lambda keys: save_owned(self.files.owned, keys),
            on_removed=lambda what, seconds: self.record_outage(REALSERVER_REMOVAL, seconds, what),
            on_batch=self._batch_applied,
            alert=lambda key, up, reason: self.alerter.transition(key, up, reason) if self.alerter else None,
            clock=lambda: self.engine.clock(),
        ), owned=owned)
        self.reconciler, self._kernel = self.table.reconciler, self.table.lock
        self.membership.load(self.spec)
        self.overrides.load()
        self.engine = HealthEngine(self.effective(), self.table.transition, **self.engine_options,
                                   hold=lambda: self.failover.link_fault() if self.failover is not None else None)
        self._set_alerter()
        prepare_kernel(self.spec, self.sysctl)
        await self._apply_kernel_profile()
        phases.done("config")
        # What `systemctl status` shows while the unit is "activating": a slow start says where it is.
        self.notifier.status(f"starting: programming the IPVS table ({_summary(self.spec)})")
        await self._sync(refresh=True, why="start")
        await self._start_sync_role()
        phases.done("table")
        self.notifier.status("starting: health checks and registration")
        self.engine.start()
        await self.membership.configure(self.spec)
        phases.done("checks")
        # Director failover (VRRP): after the first sync, so a director that wins has its table ready.
        self.failover = self._make_failover() if self.spec.failover is not None else None
        if self.failover is not None:
            self.notifier.status("starting: VRRP failover")
            await self.failover.start()
            phases.done("failover")
        # The local API (status, dashboard, drain/enable, events) and the metrics endpoint; see console.api.
        from lvsmail.console.api import start_api

        self.api = await start_api(self._view(), engine=self.engine, reconciler=self.reconciler)
        phases.done("api")
        self.ready.set()
        self._status_sent = self.status_line()
        self._status_pacer.sent(asyncio.get_running_loop().time())
        self.notifier.ready(self._status_sent)
        log.info("director: %s in sync: %s; started in %s", self.spec.name, _summary(self.spec), phases)
        try:
            await self._main_loop()
        finally:
            self.notifier.stopping()
            self._status_closed = True  # "stopping" stays the status line while checks and hooks wind down
            if self._status_later is not None:
                self._status_later.cancel()
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
            if self.sync is not None:  # only here: a restarting director must not interrupt sync
                await self._stop_sync_role()
            ops = await self.table.release()
            log.info("director: flushed %d owned services on exit", len(ops))
        else:
            log.info("director: exiting, IPVS table left in place")

    async def _main_loop(self) -> None:
        """Reload when asked, repair every ``repair_interval``, ping the watchdog; until asked to stop.

        The watchdog ping is a step of this loop, not a timer or a thread: if a
        reload or a repair never returns, no ping goes out and systemd restarts
        the director (the table stays in the kernel).
        """
        loop = asyncio.get_running_loop()
        ping = self.notifier.watchdog_interval
        next_repair = loop.time() + self.repair_interval
        next_ping = loop.time()
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
                error = await self._do_reload()
                save(self.files.reload, reload_document(self.spec.name, started, time.monotonic(), error))
                self._status_sent = self.status_line()
                self._status_pacer.sent(loop.time())
                self.notifier.ready(self._status_sent)  # READY=1 ends the reload, accepted or not
            elif loop.time() >= next_repair:
                await self._sync(refresh=True, why="repair")
                await self.membership.retry()
            else:
                continue  # only the watchdog was due
            next_repair = loop.time() + self.repair_interval
            self._save_health()
            if self.alerter:
                self.alerter.remind({k: st.last_failure for k, st in self.engine.states.items() if not st.up})

    async def _do_reload(self) -> str | None:
        """Re-read the file and follow it; the problems of a rejected file (the running table is kept), or None."""
        try:
            new = load_cluster(self.config_path)
        except ConfigError as exc:
            log.error("director: reload rejected, running table kept:\n%s", exc)
            self._reload_note = f"reload at {time.strftime('%H:%M:%S')} rejected, running the previous file"
            return str(exc)
        self._reload_note = None
        self.spec = new
        self.engine.update(self.effective())
        self._set_alerter()
        prepare_kernel(new, self.sysctl)
        await self._apply_kernel_profile()
        await self._sync(refresh=True, why="reload")
        await self.membership.configure(new)
        await self._reload_sync_role()
        # Failover: unchanged instances keep running; changed ones are retuned or restarted; see Failover.update.
        if new.failover is None and self.failover is not None:
            await self.failover.stop()
            self.failover = None
        elif new.failover is not None and self.failover is None:
            self.failover = self._make_failover()
            await self.failover.start()
        elif new.failover is not None:
            await self.failover.update(new.failover, new)
        log.info("director: reloaded %s: %s", new.name, _summary(new))
        return None

    def _view(self):
        """The operator surface's view (lvsmail.console.view): each part it may read, passed explicitly.

        Every access of the operator surface to the daemon's members is here, so the console never holds
        the Director.
        """
        from lvsmail.director.view import LiveView

        return LiveView(state=self.files, config_path=self.config_path, overrides=self.overrides,
                        spec=lambda: self.spec, effective=self.effective, membership=self.membership,
                        engine=self.engine, table=self.table.dump, timeouts=self.table.timeouts,
                        daemons=self.table.daemons, apply=lambda why: self._sync(refresh=False, why=why),
                        failover=lambda: self.failover.status(peers=True) if self.failover is not None else None,
                        sync_role=lambda: self.sync, sysctl=self.sysctl, request_reload=self.request_reload)

    # -- registration API: joined members ----------------------------------------------

    def effective(self) -> ClusterSpec:
        """The file's spec with the real servers that joined through the registration API."""
        return self.membership.merged(self.spec)

    async def _members_changed(self, services: set[str]) -> None:
        """A member joined, drained or left: follow it in the health checks and the kernel before replying."""
        self.engine.update(self.effective())
        if self.failover is not None:  # instances tracking these services look at them again
            self.failover.services_changed(services)
        # A full sync rather than only the members' services: checks through the VIP add a probe
        # service per real server, which a joined member needs as much as a static one.
        await self._sync(refresh=True, why=f"members of {', '.join(sorted(services))}")
        self._save_health(now=True)  # status shows a join or leave at once

    async def _member_connections(self, address: str) -> dict[str, tuple[int, int]]:
        """(active, inactive) connections of one member per service, from the kernel's counters."""
        from lvsmail.ipvs.model import DestKey

        table = await self.table.dump(counters=True)
        out = {}
        for svc in self.effective().services:
            for rs in svc.realservers:
                if rs.address == address:
                    dest = table.get(service_key(svc))
                    entry = dest.dests.get(DestKey(rs.address, rs.port)) if dest else None
                    out[svc.name] = (entry.active, entry.inactive) if entry else (0, 0)
        return out

    def _batch_applied(self, names: set[str]) -> None:
        """A batch of health transitions reached the kernel (or was refused): retrack the failover
        instances that follow those services, and publish the new health."""
        if self.failover is not None:
            self.failover.services_changed(names)
        self._save_health()

    def record_outage(self, kind: str, seconds: float, detail: str) -> None:
        """Keep one measured failover for the availability report; a write failure is logged, not fatal."""
        try:
            self.outages.record(kind, max(0.0, seconds), detail=detail)
        except (OSError, ValueError) as exc:
            log.warning("director: cannot record %s of %.3f s: %s", kind, seconds, exc)

    def _make_failover(self) -> Failover:
        """The failover of the file's ``failover:`` section, reaching this director only through its hooks."""
        hooks = FailoverHooks(
            publish=lambda status: save(self.files.failover, status), on_role=self._role_changed,
            on_takeover=lambda what, seconds: self.record_outage(DIRECTOR_TAKEOVER, seconds, what),
            sync_role=lambda: self.sync, service_up=self.engine.service_up)
        return Failover(self.spec.failover, self.spec, hooks, self.failover_options)

    def _role_changed(self, change: RoleChange) -> None:
        """A VRRP instance changed role: systemd's status line follows."""
        self.publish_status()

    def _set_alerter(self) -> None:
        """(Re)create the alerter when the file's alerts block is new or changed."""
        alerts = self.spec.alerts
        if alerts is None:
            self.alerter = None
        elif self.alerter is None or self.alerter.spec != alerts:
            self.alerter = Alerter(alerts, self.spec.name, **self.alerter_options)

    async def _sync(self, *, refresh: bool, why: str) -> None:
        """One full sync of the kernel table (start, repair, reload, members, operators), then the profile file."""
        if why == "repair" and self.sync is not None and self.sync.wanted != self.sync.role:
            await self.sync.retry()  # a refused sync role (interface not there yet) is tried again
        if await self.table.sync(why, refresh=refresh) is not None:
            self._save_profile()

    # -- kernel profile and connection sync ----------------------------------------------

    async def _apply_kernel_profile(self) -> None:
        """Set the sysctls the file's ``kernel:`` section manages; failures are logged, status flags them."""
        if not kernel_profile.wanted(self.spec):
            return
        await self.backend.get_timeouts()  # opening the backend loads ip_vs, which creates net.ipv4.vs.*
        kernel_profile.apply(self.spec, self.sysctl)

    async def _start_sync_role(self) -> None:
        """Create the sync role from ``sync:`` and take the initial role (see sync.initial_role)."""
        if self.spec.sync is None:
            return
        self.sync = SyncRole(self.backend, self.spec.sync)
        await self._take_role(initial_role(self.spec))

    async def _take_role(self, role: str) -> None:
        try:
            await (self.sync.become_master() if role == "master" else self.sync.become_backup())
        except IPVSError:
            return  # logged by SyncRole; status shows the error, the next reload retries
        self._save_profile()

    async def _reload_sync_role(self) -> None:
        """Follow a reload: a new, changed or removed ``sync:`` section."""
        new = self.spec.sync
        if new is None:
            if self.sync is not None:
                await self._stop_sync_role()
                self.sync = None
            return
        if self.sync is None:
            await self._start_sync_role()
            return
        try:
            await self.sync.update(new)
        except IPVSError:
            return
        if new.role != "auto" and new.role != self.sync.role:
            await self._take_role(new.role)

    async def _stop_sync_role(self) -> None:
        try:
            await self.sync.stop()
        except IPVSError:
            pass  # logged by SyncRole with the kernel's reason; nothing else to do on the way out

    def _save_profile(self) -> None:
        """Publish the kernel profile and the sync role for ``status``."""
        if self.spec is None:
            return
        save(self.files.kernel, profile_document(self.spec, kernel_profile.wanted(self.spec),
                                                 self.sync.status() if self.sync is not None else None))

    # -- systemd's status line ---------------------------------------------------------

    def status_line(self) -> str:
        """The STATUS= line: "3 services, 11/12 real servers up, VRRP MASTER" (and a rejected reload)."""
        states = self.engine.states if self.engine is not None else {}
        spec = self.effective()
        # A real server without a check is never taken out: it counts as up, as it is in the kernel.
        health = [getattr(states.get((svc.name, rs.address, rs.port)), "up", True)
                  for svc in spec.services for rs in svc.realservers]
        return status_line(len(spec.services), sum(health), len(health), self.vrrp_roles(), self._reload_note)

    def vrrp_roles(self) -> dict[str, str]:
        """Each VRRP instance's role now (empty without a failover: section)."""
        return self.failover.roles() if self.failover is not None else {}

    def publish_status(self) -> None:
        """Send the status line to systemd if it changed: at once, or STATUS_PERIOD after the last one."""
        if (not self.notifier.enabled or not self.ready.is_set() or self._status_closed
                or self._status_later is not None):
            return  # not under systemd; not started (READY=1 carries the first line); stopping; or a send is due
        loop = asyncio.get_running_loop()
        wait = self._status_pacer.wait(loop.time())
        if wait > 0:
            self._status_later = loop.call_later(wait, self._publish_status_later)
            return
        line = self.status_line()
        if line != self._status_sent:
            self._status_sent = line
            self._status_pacer.sent(loop.time())
            self.notifier.status(line)

    def _publish_status_later(self) -> None:
        self._status_later = None
        self.publish_status()

    # -- health for `lvsmail director status` -------------------------------------------

    def _save_health(self, *, now: bool = False) -> None:
        """Publish health for ``status`` (at most once a second, unless ``now``) and systemd's status line."""
        if self.engine is None or self.spec is None:
            return
        self.publish_status()  # the same moments change systemd's status line
        self.health_file.save(now=now)

    def _health_document(self) -> dict:
        return health_document(self.effective(), self.engine.states, self.engine.clock(),
                               self.membership.published(self.spec))


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

