"""``lvsmail director start``: keep the kernel's IPVS table equal to the cluster file.

One loop owns every decision. Signal handlers only record intent (reload, stop)
and wake the loop; the loop reloads, repairs drift on a timer, and exits. A bad
file on reload is logged with all its errors and the running table is kept.

On exit the table stays in place, so restarting the director (an upgrade, a
crash) never interrupts mail; ``--flush-on-exit`` removes only the services
this director owns. Ownership is remembered in a small state file so that a
service removed from the file while the director was down is still cleaned up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

from lvsmail.config import ConfigError, load_cluster
from lvsmail.director.desired import desired_table, desired_timeouts, service_key
from lvsmail.director.reconcile import Reconciler, ReconcileError
from lvsmail.health.alerts import Alerter
from lvsmail.health.engine import HealthEngine, Target
from lvsmail.health.state import TransitionEvent
from lvsmail.health.via_vip import prepare_kernel
from lvsmail.ipvs.model import IPVSBackend, ServiceKey, Table
from lvsmail.spec import ClusterSpec

log = logging.getLogger("lvsmail.director")

DEFAULT_STATE_DIR = "/run/lvsmail"


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
    ) -> None:
        self.config_path = config_path
        self.backend = backend
        self.repair_interval = repair_interval
        self.flush_on_exit = flush_on_exit
        self.state_dir = Path(state_dir)
        self.spec: ClusterSpec | None = None
        self.reconciler: Reconciler | None = None
        self.engine: HealthEngine | None = None
        self.engine_options = engine_options or {}
        self.alerter: Alerter | None = None
        self.alerter_options = alerter_options or {}
        self._kernel = asyncio.Lock()  # one reconcile at a time: the loop's and health transitions'
        self._reload = asyncio.Event()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()

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
        self.spec = load_cluster(self.config_path)
        self.reconciler = Reconciler(self.backend, owned=self._load_owned())
        self.engine = HealthEngine(self.spec, self._on_transition, **self.engine_options)
        self._set_alerter()
        prepare_kernel(self.spec)
        await self._sync(refresh=True, why="start")
        self.engine.start()
        self.ready.set()
        _sd_notify("READY=1")
        log.info("director: %s in sync: %s", self.spec.name, _summary(self.spec))
        try:
            while not self._stop.is_set():
                woke = await _first(self._reload.wait(), self._stop.wait(), timeout=self.repair_interval)
                if self._stop.is_set():
                    break
                if woke and self._reload.is_set():
                    self._reload.clear()
                    await self._do_reload()
                else:
                    await self._sync(refresh=True, why="repair")
                self._save_health()
                if self.alerter:
                    self.alerter.remind({k: st.last_failure for k, st in self.engine.states.items() if not st.up})
        finally:
            await self.engine.stop()
            if self.alerter:
                await self.alerter.drain()
        if self.flush_on_exit:
            ops = await self.reconciler.release()
            self._save_owned(set())
            log.info("director: flushed %d owned services on exit", len(ops))
        else:
            log.info("director: exiting, IPVS table left in place")

    async def _do_reload(self) -> None:
        try:
            new = load_cluster(self.config_path)
        except ConfigError as exc:
            log.error("director: reload rejected, running table kept:\n%s", exc)
            return
        self.spec = new
        self.engine.update(new)
        self._set_alerter()
        prepare_kernel(new)
        await self._sync(refresh=True, why="reload")
        log.info("director: reloaded %s: %s", new.name, _summary(new))

    def desired(self) -> Table:
        """The table the file asks for, with real servers as their health allows."""
        return desired_table(self.spec, self.engine.health() if self.engine else None)

    async def _on_transition(self, target: Target, event: TransitionEvent) -> None:
        """A real server went up or down: change just its service in the kernel, at once."""
        svc = next((s for s in self.spec.services if s.name == target.service), None)
        if svc is None:  # removed by a reload while the check was running
            return
        async with self._kernel:
            try:
                await self.reconciler.sync(self.desired(), only={service_key(svc)})
            except ReconcileError as exc:
                log.error("director: health %s of %s: kernel refused: %s", event.word, target.key, exc)
        if self.alerter:
            self.alerter.transition(target.key, event.up, event.reason)
        self._save_health()

    def _set_alerter(self) -> None:
        """(Re)create the alerter when the file's alerts block is new or changed."""
        alerts = self.spec.alerts
        if alerts is None:
            self.alerter = None
        elif self.alerter is None or self.alerter.spec != alerts:
            self.alerter = Alerter(alerts, self.spec.name, **self.alerter_options)

    async def _sync(self, *, refresh: bool, why: str) -> None:
        assert self.spec is not None and self.reconciler is not None
        try:
            async with self._kernel:
                report = await self.reconciler.sync(self.desired(), desired_timeouts(self.spec), refresh=refresh)
        except ReconcileError as exc:
            # Keep running: the next repair period retries, and an operator sees why.
            log.error("director: %s: kernel refused: %s", why, exc)
            return
        if report.applied and why == "repair":
            log.warning("director: repaired drift with %d operations", len(report.applied))
        self._save_owned(self.reconciler.owned)

    # -- health for `lvsmail director status` -------------------------------------------

    def health_file(self) -> Path:
        """Where the running director publishes its real servers' health."""
        return self.state_dir / (Path(self.config_path).stem + ".health.json")

    def _save_health(self) -> None:
        if self.engine is None or self.spec is None:
            return
        now_wall, now_mono = time.time(), self.engine.clock()
        entries = []
        for svc in self.spec.services:
            for rs in svc.realservers:
                st = self.engine.states.get((svc.name, rs.address, rs.port))
                if st is None:
                    continue
                check = svc.check  # None: watched only for maintenance files (an "on" check)
                entries.append({
                    "service": str(service_key(svc)), "name": svc.name, "address": rs.address, "port": rs.port,
                    "check": check.type if check else "on", "up": st.up, "since": now_wall - (now_mono - st.since),
                    "latency": st.last_latency, "last_failure": st.last_failure, "checks": st.checks,
                    "transitions": st.transitions, "weight": rs.weight, "quiescent": svc.quiescent,
                    "verify": check.verify if check else True,
                })
        _write_json(self.health_file(), {"cluster": self.spec.name, "written": now_wall, "realservers": entries})

    # -- ownership across restarts ---------------------------------------------------

    def _state_file(self) -> Path:
        return self.state_dir / (Path(self.config_path).stem + ".owned.json")

    def _load_owned(self) -> set[ServiceKey]:
        try:
            data = json.loads(self._state_file().read_text())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.warning("director: ignoring unreadable state %s: %s", self._state_file(), exc)
            return set()
        return {ServiceKey(**item) for item in data}

    def _save_owned(self, owned: set[ServiceKey]) -> None:
        _write_json(self._state_file(), [_key_json(k) for k in sorted(owned)])


def _write_json(path: Path, data) -> None:
    """Replace a state file atomically; a failure is logged, the director keeps running."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("director: cannot write %s: %s", path, exc)


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


def _summary(spec: ClusterSpec) -> str:
    reals = sum(len(s.realservers) for s in spec.services)
    return f"{len(spec.services)} services, {reals} real servers"


def _key_json(k: ServiceKey) -> dict:
    return {"af": int(k.af), "protocol": k.protocol, "addr": k.addr, "port": k.port, "fwmark": k.fwmark}


def _sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) we are ready; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(state.encode(), addr)
        except OSError as exc:
            log.warning("director: sd_notify failed: %s", exc)
