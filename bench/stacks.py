"""The same chaos run against each director stack, one after another with one seed: one table, one plot.

lvsmail, the seed's own heartbeat + ldirectord pair and keepalived each get
``lvsmail lab chaos --stack S --seed N --duration D`` (the same topology, real
servers, mail stack, clients and fault schedule; only the director layer
differs), in ONE lab VM boot; then lvsmail.lab.chaos.compare puts the three
reports side by side. Nothing is asserted: a stack that loses mail or never
recovers is a finding of the table, not a failure of this script.

    .venv/bin/python bench/stacks.py --seed 1 --duration 300     # about an hour under emulation
    .venv/bin/python bench/stacks.py --short                     # five faults per stack, ~10 minutes

Outside the lab (no IPVS on this kernel) it re-executes itself in the lab VM
(lvsmail.lab.vm, the same runner as ``deploy/lab/run``) with ``--out-dir``
writable there. It writes ``OUT/<stack>/chaos-*.json`` (each run's own report,
plot and daemon logs), ``OUT/stacks.md``, ``OUT/stacks.json`` and
``OUT/stacks.png``. ``--compare-only`` redoes the comparison from the newest
report of each stack already in ``OUT`` (no VM).

Exit status: 0 when every stack produced a report, 1 when one did not (its
run's exit status and log are named), 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from lvsmail.lab.chaos import compare  # noqa: E402
from lvsmail.lab.chaos.schedule import KINDS  # noqa: E402

STACKS = compare.STACK_ORDER
#: The short variant (CI): one of each kind of fault whose handling differs most between the stacks —
#: a hung real server, the master's SIGKILL, a split brain, a reload, and a join (n/a for the anchors).
SHORT_KINDS = ("rs_hang", "director_kill", "director_split", "reload", "join_leave")
#: Long enough for every SHORT_KINDS fault once whatever the seed (the longest holds and gaps: 98 s).
SHORT_DURATION = 100.0
#: Bound of one stack's run beyond its duration (setup, recovery waits, final delivery, teardown), as
#: ``lvsmail lab chaos`` allows itself in the VM.
RUN_SLACK = 2400.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked; argparse exits 2 with the reason on bad ones."""
    p = argparse.ArgumentParser(prog="bench/stacks.py", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule, the same for every stack")
    p.add_argument("--duration", type=float, default=None,
                   help=f"seconds of faults per stack (default 300; {SHORT_DURATION:.0f} with --short)")
    p.add_argument("--kinds", default=None, help=f"only these fault kinds (comma-separated): {', '.join(KINDS)}")
    p.add_argument("--stacks", default=",".join(STACKS), help=f"which stacks, in order (default {','.join(STACKS)})")
    p.add_argument("--out-dir", type=Path, default=REPO / "lab-out" / "stacks", help="where everything goes")
    p.add_argument("--short", action="store_true",
                   help=f"the CI variant: {SHORT_DURATION:.0f} s, kinds {','.join(SHORT_KINDS)} (unless given)")
    p.add_argument("--compare-only", action="store_true",
                   help="no runs: compare the newest report of each stack already in --out-dir")
    args = p.parse_args(argv)
    args.stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = [s for s in args.stacks if s not in STACKS]
    if unknown or not args.stacks or len(set(args.stacks)) != len(args.stacks):
        p.error(f"--stacks: a comma-separated subset of {', '.join(STACKS)} without repeats, "
                f"got {','.join(args.stacks) or 'nothing'}")
    if args.kinds is None and args.short:
        args.kinds = ",".join(SHORT_KINDS)
    if args.kinds is not None:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            p.error(f"--kinds: unknown fault kind(s) {', '.join(bad) or '(none given)'}; known: {', '.join(KINDS)}")
        args.kinds = ",".join(kinds)
    if args.duration is None:
        args.duration = SHORT_DURATION if args.short else 300.0
    if not 20 <= args.duration <= 3600:
        p.error(f"--duration: between 20 and 3600 seconds (lvsmail lab chaos's range), got {args.duration:g}")
    args.out_dir = args.out_dir.resolve()
    return args


def chaos_argv(stack: str, args: argparse.Namespace) -> list[str]:
    """The ``lvsmail lab chaos`` command of one stack (run with this interpreter, as the lab runs it)."""
    argv = [sys.executable, "-m", "lvsmail", "lab", "chaos", "--stack", stack, "--seed", str(args.seed),
            "--duration", f"{args.duration:g}", "--out", str(args.out_dir / stack)]
    if args.kinds:
        argv += ["--kinds", args.kinds]
    return argv


def newest_report(directory: Path, since: float = 0.0) -> Path | None:
    """The newest chaos report JSON in ``directory`` written at or after ``since`` (time.time())."""
    found = [p for p in directory.glob("chaos-*.json") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_stack(stack: str, args: argparse.Namespace) -> dict:
    """One stack's chaos run, its output here and in ``OUT/<stack>/chaos.log``; what it produced."""
    directory = args.out_dir / stack
    directory.mkdir(parents=True, exist_ok=True)
    argv = chaos_argv(stack, args)
    log = directory / "chaos.log"
    print(f"== stack {stack}: {' '.join(argv[1:])} (log {log})", flush=True)
    started = time.time()
    with open(log, "w") as out:
        rc = _tee(argv, out, args.duration + RUN_SLACK)
    seconds = round(time.time() - started, 1)
    report = newest_report(directory, since=started)
    print(f"== stack {stack}: exit {rc if rc is not None else 'timeout'} after {seconds:.0f} s, "
          f"report {report or 'NONE (see the log)'}", flush=True)
    return {"stack": stack, "exit": rc, "seconds": seconds, "report": str(report) if report else None,
            "log": str(log)}


def _tee(argv: list[str], out, timeout: float) -> int | None:
    """Run ``argv``, its output line by line to stdout and ``out``; its exit status, None on timeout.

    On timeout the run gets SIGINT first (its ``finally`` takes the lab cluster down, so the next
    stack starts clean), then, two minutes later, SIGKILL for its whole process group.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, text=True,
                            start_new_session=True)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    label = f"  [{argv[argv.index('--stack') + 1]}] "

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            sys.stdout.write(label + line)
            sys.stdout.flush()

    # A thread, not a loop here: a daemon the run left behind may hold the pipe open after the run exits.
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    rc = proc.wait()
    timer.cancel()
    reader.join(timeout=10)
    if expired.is_set():
        out.write(f"\nbench/stacks.py: timed out after {timeout:.0f} s (exit {rc})\n")
        return None
    return rc


def write_outputs(args: argparse.Namespace, runs: list[dict], command: str) -> int:
    """Compare the reports the runs produced; write stacks.md, stacks.json and stacks.png."""
    paths = [Path(r["report"]) for r in runs if r["report"]]
    missing = [r for r in runs if not r["report"]]
    if not paths:
        print("bench/stacks.py: no stack produced a report; nothing to compare", file=sys.stderr)
        return 1
    reports = compare.load_reports(paths)
    for r, report in zip([r for r in runs if r["report"]], reports):
        if compare.stack_of(report) != r["stack"]:
            raise compare.CompareError(f"{r['report']} is a report of stack {compare.stack_of(report)!r}, "
                                       f"not {r['stack']!r}")
    comparison = compare.compare(reports)
    comparison["plot"] = compare.plot(comparison, args.out_dir / "stacks.png")
    head = [f"# Director stacks under the same chaos run ({time.strftime('%Y-%m-%d', time.gmtime())})", "",
            f"Command: `{command}`", ""]
    for r in runs:
        ran = "an earlier run" if r.get("earlier") else f"exit {r['exit']}, {r['seconds']:.0f} s"
        if r["report"]:
            head.append(f"- {r['stack']}: {ran}, report `{r['report']}`")
        elif r.get("earlier"):
            head.append(f"- {r['stack']}: NO REPORT in `{args.out_dir / r['stack']}`")
        else:
            head.append(f"- {r['stack']}: NO REPORT ({ran}; log `{r['log']}`)")
    head += [f"- note: {n}" for n in comparison.get("notes", ())]
    text = "\n".join(head) + "\n\n" + compare.markdown(comparison)
    (args.out_dir / "stacks.md").write_text(text)
    (args.out_dir / "stacks.json").write_text(json.dumps({"command": command, "runs": runs,
                                                          "comparison": comparison}, indent=2) + "\n")
    print(text)
    print(f"written: {args.out_dir / 'stacks.md'}, {args.out_dir / 'stacks.json'}, {comparison['plot']}")
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    """Run every stack in the lab (re-executing in the VM when needed), then compare."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    command = "bench/stacks.py " + " ".join(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.compare_only:
        runs = []
        for stack in args.stacks:
            report = newest_report(args.out_dir / stack) if (args.out_dir / stack).is_dir() else None
            runs.append({"stack": stack, "earlier": True, "report": str(report) if report else None,
                         "log": str(args.out_dir / stack / "chaos.log")})
        return _compared(args, runs, command)
    from lvsmail.lab import vm

    if os.environ.get("LVSMAIL_IN_LAB") != "1" and not vm.host_capability().ok:
        # One VM boot for every stack: this script again, inside, with the same options.
        timeout = len(args.stacks) * (args.duration + RUN_SLACK) + 600
        try:
            return vm.run([sys.executable, str(Path(__file__).resolve()), *argv], memory="3G", timeout=timeout,
                          out_dir=args.out_dir)
        except vm.LabError as exc:
            print(f"bench/stacks.py: {exc}", file=sys.stderr)
            return vm.EXIT_SETUP
    runs = [run_stack(stack, args) for stack in args.stacks]
    return _compared(args, runs, command)


def _compared(args: argparse.Namespace, runs: list[dict], command: str) -> int:
    """write_outputs, with a report that cannot be compared named (exit 2) instead of a traceback."""
    try:
        return write_outputs(args, runs, command)
    except compare.CompareError as exc:
        print(f"bench/stacks.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
