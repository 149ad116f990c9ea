"""Failover durations the director measured, kept for the availability report.

One JSON object per line in ``<state_dir>/<stem>.outages.jsonl``: appending a
line is cheap and a reader never sees half a record, because each record goes
out in a single ``write`` on an ``O_APPEND`` descriptor while a lock file keeps
writers and the trimmer apart. The file is bounded: when it grows past
``max_bytes`` the oldest records go, so a flapping real server cannot fill
/run. Records are facts (what happened, how long, when), never derived figures.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lvsmail.statefiles import StateDir, write_text

#: A backup director took over the VIPs (seconds: from the master's last sign of life to takeover).
DIRECTOR_TAKEOVER = "director_takeover"
#: A failed real server left the IPVS table (seconds: from its first failed check to removal).
REALSERVER_REMOVAL = "realserver_removal"
KINDS = (DIRECTOR_TAKEOVER, REALSERVER_REMOVAL)

#: Upper bound of the file; trimming keeps the newest half.
MAX_BYTES = 1 << 20
#: Longest ``detail`` kept (it names a peer or a real server, not a log).
MAX_DETAIL = 200


@dataclass(frozen=True)
class Outage:
    """One measured failover: its kind, duration in seconds, UNIX time it ended, and what failed."""

    kind: str
    seconds: float
    when: float
    detail: str = ""

    def to_json(self) -> str:
        """The record as one JSON line (without the newline)."""
        return json.dumps({"kind": self.kind, "seconds": self.seconds, "when": self.when, "detail": self.detail},
                          separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class OutageLog:
    """What a reader found: the records, and the line numbers it could not read."""

    outages: tuple[Outage, ...]
    unreadable: tuple[int, ...] = ()

    def of(self, kind: str) -> list[Outage]:
        """The records of one kind, oldest first."""
        return [o for o in self.outages if o.kind == kind]

    def median(self, kind: str) -> float | None:
        """Median duration of one kind, or None when nothing of that kind was recorded."""
        values = [o.seconds for o in self.of(kind)]
        return statistics.median(values) if values else None


def outages_path(state_dir: str | Path, config_path: str | Path) -> Path:
    """Where the director of ``config_path`` records its failovers (next to its other state files)."""
    return StateDir.of(state_dir, config_path).outages


def validate(kind: str, seconds: float, when: float, detail: str) -> Outage:
    """An Outage from checked values; ValueError names the bad one."""
    if kind not in KINDS:
        raise ValueError(f"unknown outage kind {kind!r}; expected one of {', '.join(KINDS)}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds < 0:
        raise ValueError(f"outage duration must be a finite number of seconds >= 0, got {seconds!r}")
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when) or when < 0:
        raise ValueError(f"outage time must be a UNIX time, got {when!r}")
    if not isinstance(detail, str):
        raise ValueError(f"outage detail must be text, got {type(detail).__name__}")
    # One line per record: a newline in the detail would split it.
    detail = " ".join(detail.split())[:MAX_DETAIL]
    return Outage(kind, float(seconds), float(when), detail)


class OutageRecorder:
    """Appends measured failovers to one bounded JSON-lines file."""

    def __init__(self, path: str | Path, *, max_bytes: int = MAX_BYTES) -> None:
        if max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")
        self.path = Path(path)
        self.max_bytes = max_bytes

    def record(self, kind: str, seconds: float, when: float | None = None, detail: str = "") -> Outage:
        """Append one outage (``when`` defaults to now); OSError if the state directory is unusable."""
        outage = validate(kind, seconds, time.time() if when is None else when, detail)
        data = (outage.to_json() + "\n").encode("ascii")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                written = os.write(fd, data)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
            if size > self.max_bytes:
                self._trim()
        return outage

    @contextmanager
    def _locked(self):
        """Exclusive lock on a side file: the data file itself is replaced when trimmed."""
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _trim(self) -> None:
        """Keep the newest whole lines that fit in half the bound; replace the file atomically."""
        lines = self.path.read_bytes().splitlines(keepends=True)
        kept: list[bytes] = []
        total = 0
        for line in reversed(lines):
            if total + len(line) > self.max_bytes // 2:
                break
            kept.append(line)
            total += len(line)
        write_text(self.path, b"".join(reversed(kept)), mode=0o640, fsync=True)


def read_outages(path: str | Path) -> OutageLog:
    """Every readable record of a file (an absent file is an empty log); bad lines are reported by number."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return OutageLog(())
    outages: list[Outage] = []
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            outages.append(validate(data["kind"], data["seconds"], data["when"], data.get("detail", "")))
        except (ValueError, KeyError, TypeError):
            bad.append(number)
    return OutageLog(tuple(outages), tuple(bad))
