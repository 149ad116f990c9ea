"""Where lvsmail's health engine spends its CPU: the engine alone, no IPVS, against the C responder.

Runs ``HealthEngine`` in this process on N loopback real servers (SMTP, interval 2 s,
timeout 3 s, transitions ignored) and reports checks completed per second and CPU
per check, split into user (Python) and system (the kernel's TCP work) time;
``--profile`` adds a cProfile of the measured window (which slows it down, so its
rate and CPU figures are not comparable with a run without it).

Needs no IPVS, so it runs on any Linux host as well as in the lab:
    python3 bench/health_profile.py --n 1000 --seconds 20 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.health_tools import HELO, PORT, VIP, Responder, addresses, build_responder, raise_nofile  # noqa: E402
from lvsmail.config import load_cluster  # noqa: E402
from lvsmail.health.engine import HealthEngine  # noqa: E402


def cluster_file(path: Path, addrs: list[str], interval: float, timeout: float) -> None:
    """The benchmark's cluster file: one SMTP service, N real servers."""
    lines = [
        "cluster: bench", f"vips: [{VIP}]", "services:", "  - name: smtp", f"    vip: {VIP}", f"    port: {PORT}",
        f"    check: {{type: smtp, interval: {interval:g}, timeout: {timeout:g}, helo: {HELO}}}", "    realservers:",
    ] + [f"      - {a}" for a in addrs]
    path.write_text("\n".join(lines) + "\n")


def _workers_cpu(engine: HealthEngine) -> tuple[float, float]:
    """(user, system) seconds used so far by the engine's worker processes, from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for link in engine._links:  # noqa: SLF001 (a benchmark looks inside)
        if link.proc is None:
            continue
        with open(f"/proc/{link.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


class _Usage:
    """getrusage(SELF) plus the worker processes' CPU."""

    def __init__(self, engine: HealthEngine):
        r = resource.getrusage(resource.RUSAGE_SELF)
        wu, ws = _workers_cpu(engine)
        self.ru_utime, self.ru_stime = r.ru_utime + wu, r.ru_stime + ws


async def measure(engine: HealthEngine, resp: Responder, warmup: float, seconds: float, prof) -> dict:
    """Run the engine, then measure ``seconds`` of steady state (profiled if ``prof``)."""
    engine.start()
    await asyncio.sleep(warmup)
    resp.cmd("reset")
    r0, c0, t0 = _Usage(engine), engine.checks_done, time.monotonic()
    if prof:
        prof.enable()
    await asyncio.sleep(seconds)
    if prof:
        prof.disable()
    r1, c1, t1 = _Usage(engine), engine.checks_done, time.monotonic()
    st = resp.stats()
    await engine.stop()
    done = c1 - c0
    lag = _lag(engine)
    return {
        "seconds": t1 - t0, "checks": done, "completed_at_responder": st["quit"], "rate": done / (t1 - t0),
        "user_ms_per_check": (r1.ru_utime - r0.ru_utime) / max(1, done) * 1e3,
        "sys_ms_per_check": (r1.ru_stime - r0.ru_stime) / max(1, done) * 1e3,
        "cpu_share": (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / (t1 - t0),
        "failed": sum(1 for s in engine.states.values() if not s.up), "lag": lag,
    }


def _lag(engine: HealthEngine) -> str:
    """The slowest last check latency, a hint of event-loop saturation."""
    lat = sorted(s.last_latency for s in engine.states.values() if s.last_latency is not None)
    if not lat:
        return "-"
    return f"check latency median {lat[len(lat) // 2] * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms"


def by_area(prof: cProfile.Profile) -> str:
    """Own time grouped by where the code lives: the kernel calls, asyncio, lvsmail's modules, the rest."""
    areas: dict[str, float] = {}
    total = 0.0
    for (filename, _, func), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
        if func == "<method 'poll' of 'select.epoll' objects>":
            area = "idle in epoll_wait"
        elif filename == "~":
            area = "C calls: " + ("socket syscalls" if "_socket.socket" in func else "other builtins")
        elif "/lvsmail/" in filename:
            area = "lvsmail " + filename.split("/lvsmail/", 1)[1]
        elif "/asyncio/" in filename or filename.endswith("selectors.py"):
            area = "asyncio + selectors"
        else:
            area = os.path.basename(filename)
        areas[area] = areas.get(area, 0.0) + tottime
        total += tottime
    busy = total - areas.get("idle in epoll_wait", 0.0)
    lines = [f"own time by area ({busy:.2f} s busy of {total:.2f} s profiled):"]
    for area, t in sorted(areas.items(), key=lambda kv: -kv[1]):
        if area != "idle in epoll_wait" and t >= 0.005 * busy:
            lines.append(f"  {t / busy:6.1%}  {area}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=6.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--profile", action="store_true", help="cProfile the window and print the top functions")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=None, help="the engine's bound on checks in flight")
    ap.add_argument("--uvloop", action="store_true", help="use uvloop's event loop if installed")
    ap.add_argument("--workers", type=int, default=0, help="the engine's check worker processes")
    args = ap.parse_args()
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="health-profile-", dir=os.environ.get("LVSMAIL_LAB_OUT")))
    addrs = addresses(args.n)
    resp = Responder(build_responder(work), addrs)
    cfg = work / "bench.yaml"
    cluster_file(cfg, addrs, args.interval, args.timeout)
    prof = cProfile.Profile() if args.profile else None

    async def go():
        async def ignore(target, event):
            pass
        opts = {} if args.concurrency is None else {"concurrency": args.concurrency}
        opts["workers"] = args.workers
        engine = HealthEngine(load_cluster(cfg), ignore, **opts)
        return await measure(engine, resp, args.warmup, args.seconds, prof)

    if args.uvloop:
        import uvloop
        res = uvloop.run(go())
    else:
        res = asyncio.run(go())
    resp.close()
    print(f"N={args.n} interval {args.interval:g} s: {res['rate']:.1f} checks/s of {args.n / args.interval:.0f}"
          f" ({res['completed_at_responder']} completed at the responder in {res['seconds']:.1f} s);"
          f" CPU per check {res['user_ms_per_check']:.3f} ms user + {res['sys_ms_per_check']:.3f} ms system;"
          f" engine busy {res['cpu_share']:.0%} of one CPU; {res['failed']} servers down; {res['lag']}")
    if prof:
        print(by_area(prof))
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
            print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
