"""Shared benchmark reporting: min/median/max per tool and the ratio to a reference."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Series:
    """Repeated timings of one tool on one case, in seconds."""

    case: str
    tool: str
    samples: list[float] = field(default_factory=list)

    @contextmanager
    def timed(self):
        """Time the body and append the sample."""
        t0 = time.perf_counter()
        yield
        self.samples.append(time.perf_counter() - t0)

    @property
    def median(self) -> float:
        """Median sample."""
        return statistics.median(self.samples)


def ratio_line(ours: Series, ref: Series, goal: str, met: bool) -> str:
    """One comparison row: both tools' min/median/max and median ratio."""
    r = ours.median / ref.median
    rmin = min(ours.samples) / min(ref.samples)
    rmax = max(ours.samples) / max(ref.samples)
    return (
        f"{ours.case:<34} {ours.tool:<18} {_mmm(ours)}  vs {ref.tool:<20} {_mmm(ref)}"
        f"  ratio {r:6.3f} (min {rmin:.3f} max {rmax:.3f})  goal {goal}: {'met' if met else 'NOT met'}"
    )


def ab_line(new: Series, base: Series) -> str:
    """One A/B row, no goal: two builds of the same tool, min/median/max each and the ratios new / base."""
    return (
        f"{new.case:<34} {new.tool:<18} {_mmm(new)}  vs {base.tool:<20} {_mmm(base)}"
        f"  ratio {new.median / base.median:6.3f} (min {min(new.samples) / min(base.samples):.3f}"
        f" max {max(new.samples) / max(base.samples):.3f})"
    )


def _mmm(s: Series) -> str:
    unit, k = ("ms", 1e3) if s.median < 1 else ("s", 1)
    return f"{min(s.samples) * k:8.2f}/{s.median * k:8.2f}/{max(s.samples) * k:8.2f} {unit:<2}"


def write_json(path: str, series: list[Series], verdicts: list[dict]) -> None:
    """Machine-readable results next to the printed report."""
    with open(path, "w") as f:
        json.dump({"series": [s.__dict__ for s in series], "verdicts": verdicts}, f, indent=2)


def in_private_netns() -> int | None:
    """Re-run this benchmark in a private network namespace; None once inside it.

    A new namespace has its own, empty IPVS table and its own 127/8, so a benchmark
    never touches a running director's table. Inside, ``lo`` is brought up: without
    it the namespace has no local routing table and IPVS refuses every real server
    with EINVAL ("address not unicast"). Returns the child's exit status outside.
    """
    if os.environ.get("LVSMAIL_BENCH_NETNS") != "1":
        env = dict(os.environ, LVSMAIL_BENCH_NETNS="1")
        subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_wlc"], check=False)
        return subprocess.run(["unshare", "--net", sys.executable, *sys.argv], env=env).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return None
