"""Benchmark: health-checking N real servers, lvsmail's director beside keepalived and ldirectord.

Issue 3, in one run and a private network namespace: one TCP service 192.0.2.33:25
with N real servers 127.1.x.y:25 answered by a C SMTP responder, an SMTP check
every 2 s with a 3 s timeout, for N = 100, 500 and 1,000. For each checker:

  * steady state: CPU seconds per 1,000 checks (the checker's process tree, from
    /proc/<pid>/stat, reaped children included) and checks completed per second
    (dialogues that reached QUIT, counted by the responder), over a window cut
    in slices for min/median/max; how often each server was actually checked;
  * detection: one server starts refusing connections (its listener closed) or
    hangs (accepts, never greets) at t0 → time until it is gone from the kernel's
    table (polled every 50 ms in /proc/net/ip_vs); recovery: listener back → time
    until it is back with weight 1.

The checkers: ``lvsmail director start`` (health engine + reconciler), keepalived's
checker process with SMTP_CHECK, ldirectord with ``checktype = negotiate`` and
``service = smtp``; all three from this machine's packages (``deploy/setup``
installs keepalived; the benchmark also needs ``apt-get install ldirectord``).
``pyfloor`` (bench/health_pyfloor.py) is the cheapest SMTP check Python can make,
CPU only: what of lvsmail's cost is Python itself, in the same run.

Run it in the lab (about 10–35 minutes under emulation)::

    deploy/lab/run --timeout 3000 --out lab-out/health -- python3 bench/health.py --json lab-out/health/health.json
    deploy/lab/run --timeout 900 -- python3 bench/health.py --sizes 100      # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.health_tools import (  # noqa: E402
    CHECKERS,
    Job,
    KeepalivedChecker,
    LvsmailBoundedChecker,
    LvsmailChecker,
    LvsmailVariantChecker,
    Responder,
    addresses,
    build_responder,
    dest_weight,
    dest_weights,
    ipvsadm,
    preseed_rules,
    proc_hex,
    raise_nofile,
    read_ip_vs,
    system_busy,
)
from bench.report import in_private_netns  # noqa: E402

POLL = 0.05  # seconds between reads of the kernel table while waiting for a transition


def mmm(xs: list[float], fmt: str = "{:.2f}") -> str:
    """min/median/max of a sample."""
    if not xs:
        return "-"
    return "/".join(fmt.format(v) for v in (min(xs), statistics.median(xs), max(xs)))


class Run:
    """One run of the benchmark: the results so far, printed and saved as they come."""

    def __init__(self, args, out: Path):
        self.args = args
        self.out = out
        self.started = time.monotonic()
        self.results: list[dict] = []  # one per (checker, N)
        self.lines: list[str] = []

    def left(self) -> float:
        """Seconds left of the run's time budget."""
        return self.args.budget * 60 - (time.monotonic() - self.started)

    def emit(self, line: str) -> None:
        """Print a line at once (a long run may be cut short) and keep it for the summary."""
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        """Write everything measured so far (so a run cut short still leaves its figures)."""
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(
                {"interval": self.args.interval, "timeout": self.args.timeout, "results": self.results,
                 "verdicts": verdicts(self.results, self.args), "elapsed": time.monotonic() - self.started},
                indent=1))


def wait_ready(checker, resp: Responder, n: int, limit: float) -> float | None:
    """Wait until every real server is in the table at weight 1 and has been checked once; seconds taken."""
    t0 = time.monotonic()
    keys = {proc_hex(a) for a in checker.job.addrs}
    while time.monotonic() - t0 < limit:
        if not checker.alive():
            raise RuntimeError(f"{checker.name} exited with {checker.proc.returncode}; see {checker.log}")
        w = dest_weights(read_ip_vs())
        if all(w.get(k) == 1 for k in keys):
            st = resp.stats()
            if sum(1 for c in st["count"] if c > 0) == n:
                return time.monotonic() - t0
        time.sleep(0.5)
    return None


def steady(checker, resp: Responder, window: float, slices: int) -> dict:
    """Checks/s and CPU per 1,000 checks over ``window`` seconds, cut in ``slices``."""
    resp.cmd("reset")
    per_rate, per_cpu = [], []
    busy0, total0 = system_busy()
    (u0, s0), (ru0, rs0), t0 = checker.cpu(), resp.cpu(), time.monotonic()
    c_prev, t_prev, done_prev = u0 + s0, t0, 0
    keys = {proc_hex(a) for a in checker.job.addrs}
    removed: set[str] = set()  # healthy servers the checker took out (false positives)
    for i in range(slices):
        end = t0 + window * (i + 1) / slices
        while time.monotonic() < end:
            w = dest_weights(read_ip_vs())
            removed |= {k for k in keys if w.get(k) != 1}
            time.sleep(max(0.0, min(2.0, end - time.monotonic())))
        st = resp.stats()
        (u1, s1), t = checker.cpu(), time.monotonic()
        done = st["quit"] - done_prev
        per_rate.append(done / (t - t_prev))
        if done:
            per_cpu.append((u1 + s1 - c_prev) / done * 1e3)
        c_prev, t_prev, done_prev = u1 + s1, t, st["quit"]
    (ru1, rs1) = resp.cpu()
    busy1, total1 = system_busy()
    elapsed, done = t_prev - t0, max(1, st["quit"])
    counts = st["count"]
    gaps = [g / 1e3 for g in st["maxgap_ms"] if g >= 0]
    med = statistics.median(counts)
    return {
        "seconds": elapsed,
        "completed": st["quit"], "accepted": st["accepted"],
        "rate": st["quit"] / elapsed, "rate_slices": per_rate,
        "cpu_user": u1 - u0, "cpu_system": s1 - s0,
        "cpu_per_1000": (u1 + s1 - u0 - s0) / done * 1e3, "cpu_per_1000_slices": per_cpu,
        "user_per_1000": (u1 - u0) / done * 1e3, "system_per_1000": (s1 - s0) / done * 1e3,
        "responder_cpu_per_1000": (ru1 + rs1 - ru0 - rs0) / done * 1e3,
        "machine_busy": (busy1 - busy0) / max(1, total1 - total0),
        "checks_per_server": [min(counts), med, max(counts)],
        "period": elapsed / med if med else None,
        "max_gap": [min(gaps), statistics.median(gaps), max(gaps)] if gaps else None,
        "never_checked": sum(1 for c in counts if c == 0),
        "healthy_removed": len(removed),
    }


def until(hexkey: str, want, limit: float) -> float | None:
    """Seconds until ``want(weight or None)`` holds in the kernel table, polled every 50 ms; None past ``limit``."""
    t0 = time.monotonic()
    while True:
        if want(dest_weight(read_ip_vs(), hexkey)):
            return time.monotonic() - t0
        now = time.monotonic()
        if now - t0 > limit:
            return None
        time.sleep(max(0.0, POLL - (time.monotonic() - now)))


def events(checker, resp: Responder, run: Run, reps: int, limit: float, rng: random.Random) -> dict:
    """Detection and recovery latencies, refused and hung, ``reps`` times each."""
    n = len(checker.job.addrs)
    gone = lambda w: w is None or w == 0  # noqa: E731
    back = lambda w: w == 1  # noqa: E731
    out = {"detect_refused": [], "recover_refused": [], "detect_hang": [], "recover_hang": [], "missed": [],
           "not_in_table_before": 0}
    picks = rng.sample(range(n), min(n, 2 * reps))
    for r in range(reps):
        if run.left() < 4 * limit and r >= 1:
            out["missed"].append(f"stopped after {r} repetitions: time budget")
            break
        for variant, verb in (("refused", "down"), ("hang", "hang")):
            i = picks[(2 * r + (variant == "hang")) % len(picks)]
            key = proc_hex(checker.job.addrs[i])
            if until(key, back, limit) is None:  # the checker removed it by itself (a false positive)
                out["not_in_table_before"] += 1
                out["missed"].append(f"{variant} {checker.job.addrs[i]}: not in the table before t0")
                continue
            time.sleep(rng.uniform(0, checker.job.interval))  # an arbitrary phase against the checker's schedule
            resp.cmd(f"{verb} {i}")
            d = until(key, gone, limit)
            if d is None:
                out["missed"].append(f"{variant} {checker.job.addrs[i]}: not removed within {limit:.0f} s")
            else:
                out[f"detect_{variant}"].append(d)
            resp.cmd(f"up {i}")
            u = until(key, back, limit)
            if u is None:
                out["missed"].append(f"{variant} {checker.job.addrs[i]}: not back within {limit:.0f} s")
            elif d is not None:
                out[f"recover_{variant}"].append(u)
    return out


def measure(name: str, n: int, run: Run, exe: Path, rng: random.Random) -> dict | None:
    """Start one checker on N servers, measure it, stop it; None if it never got ready."""
    args, out = run.args, run.out
    addrs = addresses(n)
    job = Job(addrs, args.interval, args.timeout)
    if name == "lvsmail":
        checker = LvsmailChecker(job, out, repair_interval=args.lvsmail_repair)
    elif name.startswith("lvsmail@"):  # another source tree, to compare commits in one run
        checker = LvsmailChecker(job, out, repair_interval=args.lvsmail_repair, tree=Path(name[len("lvsmail@"):]))
    elif name.startswith(("lvsmail-uv", "lvsmail-w")):  # on uvloop (-uv), with N check worker processes (-wN)
        rest = name[len("lvsmail-"):]
        uvloop = rest.startswith("uv")
        workers = int(rest.rsplit("w", 1)[1]) if "w" in rest.removeprefix("uv") else 0
        checker = LvsmailVariantChecker(job, out, args.lvsmail_repair, workers=workers, uvloop=uvloop)
    elif name.startswith("lvsmail-c"):
        checker = LvsmailBoundedChecker(job, out, args.lvsmail_repair, concurrency=int(name[len("lvsmail-c"):]))
    elif name == "keepalived":
        checker = KeepalivedChecker(job, out, retry=args.keepalived_retry)
    else:
        checker = CHECKERS[name](job, out)
    name = checker.name  # lvsmail@DIR is reported by the tree's directory name
    ipvsadm("-C")
    if checker.preseed:
        ipvsadm("-R", stdin=preseed_rules(addrs))
    resp = Responder(exe, addrs)
    res: dict = {"tool": name, "n": n}
    t_start = time.monotonic()
    try:
        checker.start()
        ready = wait_ready(checker, resp, n, min(args.warmup_limit, max(30.0, run.left() - 60)))
        res["ready_after"] = ready
        if ready is None:
            res["error"] = "never ready (every server in the table and checked once)"
            run.emit(f"{name:<10} N={n:<5} NOT READY within the warm-up limit; see {checker.log}")
            return res
        time.sleep(args.interval)  # past the first, jittered round
        res["steady"] = s = steady(checker, resp, args.window, args.slices)
        expect = n / args.interval
        run.emit(
            f"{name:<10} N={n:<5} ready {ready:6.1f} s | checks/s {s['rate']:7.1f} of {expect:.0f}"
            f" (slices {mmm(s['rate_slices'], '{:.0f}')}) | CPU/1000 checks {s['cpu_per_1000']:7.3f} s"
            f" (slices {mmm(s['cpu_per_1000_slices'], '{:.3f}')}; user {s['user_per_1000']:.3f} + system"
            f" {s['system_per_1000']:.3f}) | each server every"
            f" {s['period'] or float('nan'):5.1f} s, longest gap {mmm(s['max_gap'] or [], '{:.1f}')} s"
            f" | responder {s['responder_cpu_per_1000']:.3f} s/1000 | machine busy {s['machine_busy']:.0%}"
            f" | healthy servers removed {s['healthy_removed']}")
        if not checker.detects:
            return res
        period = max(args.interval, s["period"] or args.interval * 10)
        limit = min(args.event_limit, 3 * period + args.timeout + 5)
        reps = args.reps if period <= 3 * args.interval else args.reps_slow
        if s["rate"] < 0.5 * expect:  # collapsed: one repetition shows it, more would only spend the budget
            reps = 1
        res["event_limit"] = limit
        res["events"] = e = events(checker, resp, run, reps, limit, rng)
        run.emit(
            f"{name:<10} N={n:<5} detect refused {mmm(e['detect_refused'])} s, hang {mmm(e['detect_hang'])} s"
            f" | recover {mmm(e['recover_refused'] + e['recover_hang'])} s"
            + (f" | MISSED: {'; '.join(e['missed'])}" if e["missed"] else ""))
        if not checker.alive():
            res["error"] = f"exited with {checker.proc.returncode} during the run"
        return res
    except Exception as exc:  # one checker's failure must not lose the others' figures
        res["error"] = f"{type(exc).__name__}: {exc}"
        run.emit(f"{name:<10} N={n:<5} FAILED: {res['error']}")
        return res
    finally:
        checker.stop()
        resp.close()
        res["wall"] = time.monotonic() - t_start
        run.results.append(res)
        run.save()


def verdicts(results: list[dict], args) -> list[dict]:
    """The issue's goals, checked for each N where the figures exist."""
    by = {(r["tool"], r["n"]): r for r in results if "steady" in r}
    out = []
    mine = sorted({r["tool"] for r in results if r["tool"].startswith("lvsmail")})
    for n, tool in sorted((n, t) for n in {r["n"] for r in results} for t in mine):
        ours = by.get((tool, n))
        if ours is None:
            continue
        s = ours["steady"]
        expect = n / args.interval
        # The schedule holds when the completed checks match N / interval and no server waits much longer.
        kept = s["rate"] >= 0.95 * expect and s["max_gap"] is not None and s["max_gap"][1] <= 1.25 * args.interval
        out.append({"n": n, "tool": tool, "goal": "keeps its schedule (checks/s >= 95% of N/interval,"
                    " median longest gap <= 1.25 interval)", "value": s["rate"] / expect, "met": kept})
        out.append({"n": n, "tool": tool, "goal": "no healthy server removed during the steady window",
                    "value": s.get("healthy_removed", 0), "met": s.get("healthy_removed", 0) == 0})
        ka, ld = by.get(("keepalived", n)), by.get(("ldirectord", n))
        ld_note = ""
        if ld is None:  # ldirectord is only run at small N (see --ldirectord-max); its cost per check is serial
            lds = [r for (tool, _), r in sorted(by.items()) if tool == "ldirectord"]
            if lds:
                ld, ld_note = lds[-1], f" (ldirectord measured at N={lds[-1]['n']})"
        if ka:
            r = s["cpu_per_1000"] / ka["steady"]["cpu_per_1000"]
            out.append({"n": n, "tool": tool, "goal": "CPU per check <= keepalived's", "value": r, "met": r <= 1.0})
        if ld:
            r = ld["steady"]["cpu_per_1000"] / s["cpu_per_1000"]
            out.append({"n": n, "tool": tool, "goal": "CPU per check >= 10x below ldirectord's" + ld_note, "value": r,
                        "met": r >= 10})
        e = ours.get("events")
        if e:
            for variant, bound in (("refused", args.interval + 0.2), ("hang", args.interval + args.timeout)):
                xs = e[f"detect_{variant}"]
                missed = any(m.startswith(variant) and "removed" in m for m in e["missed"])
                if xs:
                    out.append({"n": n, "tool": tool, "goal": f"detect {variant} within {bound:g} s (every repetition)",
                                "value": max(xs), "median": statistics.median(xs),
                                "met": max(xs) <= bound and not missed})
    return out


def report(run: Run) -> None:
    """The closing table: each checker's figures and lvsmail's ratios to the references."""
    args = run.args
    by = {(r["tool"], r["n"]): r for r in run.results if "steady" in r}
    run.emit("")
    run.emit(f"Health checks, SMTP, interval {args.interval:g} s, timeout {args.timeout:g} s (min/median/max)")
    mine = sorted({r["tool"] for r in run.results if r["tool"].startswith(("lvsmail", "pyfloor"))})
    for n, tool in sorted((n, t) for n in {r["n"] for r in run.results} for t in mine):
        ours = by.get((tool, n))
        for ref in ("keepalived", "ldirectord"):
            theirs = by.get((ref, n))
            if not ours or not theirs:
                continue
            a, b = ours["steady"], theirs["steady"]
            run.emit(f"N={n:<5} CPU/1000 checks   {tool} {mmm(a['cpu_per_1000_slices'], '{:.3f}')} s vs {ref}"
                     f" {mmm(b['cpu_per_1000_slices'], '{:.3f}')} s  ratio {a['cpu_per_1000'] / b['cpu_per_1000']:.3f}")
            run.emit(f"N={n:<5} checks/s          {tool} {mmm(a['rate_slices'], '{:.0f}')} vs {ref}"
                     f" {mmm(b['rate_slices'], '{:.0f}')} (of {n / args.interval:.0f})"
                     f"  ratio {a['rate'] / max(1e-9, b['rate']):.2f}")
            ea, eb = ours.get("events"), theirs.get("events")
            if ea and eb:
                for k in ("detect_refused", "detect_hang", "recover_refused", "recover_hang"):
                    if ea[k] and eb[k]:
                        run.emit(f"N={n:<5} {k.replace('_', ' '):<17} {tool} {mmm(ea[k])} s vs {ref} {mmm(eb[k])} s"
                                 f"  ratio {statistics.median(ea[k]) / statistics.median(eb[k]):.2f}")
    for v in verdicts(run.results, args):
        extra = f" (median {v['median']:.2f})" if "median" in v else ""
        verdict = "met" if v["met"] else "NOT met"
        run.emit(f"N={v['n']:<5} {v['tool']}: goal: {v['goal']}: {v['value']:.3f}{extra} -> {verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,500,1000", help="comma-separated numbers of real servers")
    ap.add_argument("--tools", default="keepalived,lvsmail,pyfloor,ldirectord",
                    help="pyfloor: the cheapest Python SMTP check (CPU only); lvsmail@DIR: the lvsmail of the"
                         " source tree DIR (a git worktree of another commit); lvsmail-cK: the same director with the"
                         " engine's concurrency bound set to K;"
                         " lvsmail-uv, lvsmail-wN, lvsmail-uv-wN: on uvloop and/or with N check worker processes")
    ap.add_argument("--variant-sizes", default="1000", help="the N at which lvsmail-cK variants run")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--window", type=float, default=24.0, help="seconds of steady state measured")
    ap.add_argument("--slices", type=int, default=4, help="the window is cut in this many slices")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each failure")
    ap.add_argument("--reps-slow", type=int, default=3, help="repetitions for a checker that cannot keep up")
    ap.add_argument("--event-limit", type=float, default=40.0, help="longest wait for one transition (s)")
    ap.add_argument("--warmup-limit", type=float, default=900.0, help="longest wait for a checker to start (s)")
    ap.add_argument("--budget", type=float, default=40.0, help="minutes for the whole run; later steps shrink")
    ap.add_argument("--lvsmail-repair", type=float, default=3600.0,
                    help="the director's --repair-interval (a full table read; long = health checks only)")
    ap.add_argument("--keepalived-retry", type=int, default=None, help="SMTP_CHECK retry (default: keepalived's, 1)")
    ap.add_argument("--ldirectord-max", type=int, default=100,
                    help="largest N for ldirectord: its start-up reads the whole table with two ipvsadm processes"
                         " per real server (O(N^2)): ~2 min at N=100 under emulation, hours at N=1,000")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", help="directory for configurations, logs and the responder (default: the lab's out dir)")
    ap.add_argument("--json", help="write results here too")
    args = ap.parse_args()
    status = in_private_netns()
    if status is not None:
        return status
    # 1,000 listeners plus the connections in flight need more than the usual 1,024 descriptors.
    raise_nofile()
    out = Path(args.out or os.path.join(os.environ.get("LVSMAIL_LAB_OUT", "/tmp"), "health-bench"))
    out.mkdir(parents=True, exist_ok=True)
    exe = build_responder(out)
    run = Run(args, out)
    rng = random.Random(args.seed)
    tools = args.tools.split(",")
    for n in [int(x) for x in args.sizes.split(",")]:
        for name in tools:
            if name.startswith("lvsmail-c") and str(n) not in args.variant_sizes.split(","):
                continue
            if name == "ldirectord" and n > args.ldirectord_max:
                run.emit(f"{name:<10} N={n:<5} skipped: above --ldirectord-max {args.ldirectord_max}")
                continue
            if run.left() < 60:
                run.emit(f"{name:<10} N={n:<5} skipped: time budget spent")
                continue
            try:
                measure(name, n, run, exe, rng)
            except Exception as exc:  # set-up trouble (ipvsadm, responder) before the checker started
                run.emit(f"{name:<10} N={n:<5} FAILED: {type(exc).__name__}: {exc}")
                run.results.append({"tool": name, "n": n, "error": f"{type(exc).__name__}: {exc}"})
                run.save()
    ipvsadm("-C")
    report(run)
    run.save()
    print(f"\nelapsed {time.monotonic() - run.started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
