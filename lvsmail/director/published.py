"""The files a running director publishes for the commands that read them: health, kernel profile, reload, owned.

``lvsmail director status`` and ``director reload`` run as separate
processes and read these files, never the daemon's memory. Each is replaced
atomically; a failed write is logged and the director keeps running, since a
stale status file must never stop the kernel table from being maintained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from lvsmail.ipvs.desired import service_key
from lvsmail.ipvs.model import ServiceKey
from lvsmail.spec import ClusterSpec
from lvsmail.statefiles import write_json

log = logging.getLogger("lvsmail.director")

#: Shortest time between two writes of the health file.
HEALTH_FILE_PERIOD = 1.0


def save(path: Path, data: object) -> None:
    """Replace a state file atomically; a failure is logged, the director keeps running."""
    try:
        write_json(path, data)
    except OSError as exc:
        log.warning("director: cannot write %s: %s", path, exc)


# -- health ------------------------------------------------------------------------------


def health_document(spec: ClusterSpec, states: dict, clock: float, joined: list[dict]) -> dict:
    """The health file's content: every checked real server of ``spec`` as ``states`` (engine clock ``clock``) see it.

    ``since`` is turned from the engine's monotonic clock into wall time, which
    is what an operator reading ``status`` on another process can compare.
    """
    now_wall = time.time()
    entries = []
    for svc in spec.services:
        for rs in svc.realservers:
            st = states.get((svc.name, rs.address, rs.port))
            if st is None:
                continue
            check = svc.check  # None: watched only for maintenance files (an "on" check)
            entries.append({
                "service": str(service_key(svc)), "name": svc.name, "address": rs.address, "port": rs.port,
                "check": check.type if check else "on", "up": st.up, "since": now_wall - (clock - st.since),
                "latency": st.last_latency, "last_failure": st.last_failure, "checks": st.checks,
                "transitions": st.transitions, "weight": rs.weight, "quiescent": svc.quiescent,
                "verify": check.verify if check else True,
            })
    return {"cluster": spec.name, "written": now_wall, "realservers": entries, "joined": joined}


class HealthFile:
    """The health file, written at most once per ``period``: a later request is deferred, never dropped.

    Rewriting a thousand servers' entries on every transition cost more than
    the checks during a mass failure; one write a second keeps ``status`` at
    most a second behind.
    """

    def __init__(self, path: Path, document: Callable[[], dict], clock: Callable[[], float], *,
                 period: float = HEALTH_FILE_PERIOD) -> None:
        self.path = path
        self.document = document  # builds the content at write time
        self.clock = clock  # the engine's clock
        self.period = period
        self.written: float | None = None  # clock of the last write
        self._later: asyncio.TimerHandle | None = None  # the deferred write, if one is due

    @property
    def deferred(self) -> bool:
        """True while a rate-limited write waits for its turn."""
        return self._later is not None

    def save(self, *, now: bool = False) -> None:
        """Write at once if the last write is ``period`` old (or ``now``: the final write at exit), else then."""
        at, last = self.clock(), self.written
        if now and self._later is not None:  # a final write replaces the deferred one
            self._later.cancel()
            self._later = None
        if not now and last is not None and at - last < self.period:
            if self._later is None:
                self._later = asyncio.get_running_loop().call_later(self.period - (at - last), self._save_later)
            return
        self.written = at
        save(self.path, self.document())

    def cancel(self) -> None:
        """Drop a deferred write (the director is gone; its last write was ``save(now=True)``)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None

    def _save_later(self) -> None:
        self._later = None
        self.save(now=True)  # scheduled ``period`` after the last write (timer rounding aside)


# -- kernel profile, reload, owned -------------------------------------------------------------


def profile_document(spec: ClusterSpec, wanted: dict, sync: dict | None) -> dict:
    """The kernel-profile file: the sysctls the file manages (``wanted``) and the sync daemon role's status."""
    return {"cluster": spec.name, "written": time.time(), "wanted": wanted, "sync": sync}


def reload_document(cluster: str, started: float, finished: float, error: str | None) -> dict:
    """The record of one reload, on CLOCK_MONOTONIC, which ``director reload`` compares with its own request."""
    return {"cluster": cluster, "started": started, "finished": finished, "ok": error is None, "error": error}


def key_json(k: ServiceKey) -> dict:
    """A service key as the ownership record stores it (``ServiceKey(**item)`` reads it back)."""
    return {"af": int(k.af), "protocol": k.protocol, "addr": k.addr, "port": k.port, "fwmark": k.fwmark}


def save_owned(path: Path, owned: Iterable[ServiceKey]) -> None:
    """Record the services this director created, so a restart still cleans up those the file dropped."""
    save(path, [key_json(k) for k in sorted(owned)])
