"""Same-run A/B of bench/ipvs_table.py across checkouts: every order of the builds, pooled.

Run it in the lab, one VM for all builds, so they share the kernel, the emulation and its noise::

    deploy/lab/run --memory 3G -- python3 bench/ab_rotation.py base=/tmp/base base2=/tmp/base2 new=. \\
        -- --services 1000

Each build runs its own ``bench/ipvs_table.py`` (its code, its benchmark) once per round; the
rounds go through every order of the builds (``--cycles`` times), so no build always runs first or
last. Two checkouts of the same commit (``base`` and ``base2`` above) measure the noise itself: a
difference between builds smaller than theirs is no difference. The first build is the reference of
the ratios. Raw results stay in ``--out`` (default ``$LVSMAIL_LAB_OUT/ab-rotation``, written
through from the VM).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.report import Series, ab_line  # noqa: E402


def rounds(names: list[str], cycles: int) -> list[tuple[str, ...]]:
    """The order of the builds in each round: every permutation, ``cycles`` times."""
    return [order for _ in range(cycles) for order in itertools.permutations(names)]


def pooled(results: dict[str, list[list[dict]]]) -> dict[tuple[str, str], dict[str, Series]]:
    """(case, tool) → build → one Series holding that build's samples from every round."""
    out: dict[tuple[str, str], dict[str, Series]] = {}
    for build, runs in results.items():
        for run in runs:
            for s in run:
                series = out.setdefault((s["case"], s["tool"]), {}).setdefault(build, Series(s["case"], build))
                series.samples.extend(s["samples"])
    return out


def report(results: dict[str, list[list[dict]]], names: list[str]) -> list[str]:
    """One A/B line per case, tool and build against the first build, plus the per-round ratios."""
    lines = []
    ref = names[0]
    for (case, tool), builds in pooled(results).items():
        lines.append(f"{case} — {tool}")
        for name in names[1:]:
            lines.append("  " + ab_line(builds[name], builds[ref]))
            per_round = [statistics.median(a["samples"]) / statistics.median(b["samples"])
                         for a, b in _pairs(results, name, ref, case, tool)]
            lines.append(f"    per round {name} ÷ {ref}: " + " ".join(f"{r:.3f}" for r in per_round))
    return lines


def _pairs(results, name, ref, case, tool):
    """The two builds' series of one case, round by round."""
    for mine, theirs in zip(results[name], results[ref]):
        a = next(s for s in mine if (s["case"], s["tool"]) == (case, tool))
        b = next(s for s in theirs if (s["case"], s["tool"]) == (case, tool))
        yield a, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", metavar="NAME=DIR", help="checkouts to compare; the first is the reference")
    ap.add_argument("--cycles", type=int, default=1, help="how many times to run every order")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("LVSMAIL_LAB_OUT", "lab-out")) / "ab-rotation")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, bench_args = ap.parse_args(argv[:cut]), argv[cut + 1:]  # after "--": ipvs_table.py's own options
    builds = dict(b.split("=", 1) for b in args.builds)
    names = list(builds)
    if len(names) < 2 or len(names) != len(args.builds):
        ap.error("give at least two builds, each NAME=DIR with a distinct NAME")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[list[dict]]] = {name: [] for name in names}
    for number, order in enumerate(rounds(names, args.cycles), 1):
        for name in order:
            tree = Path(builds[name]).resolve()
            path = args.out / f"ipvs-{name}-{number}.json"
            print(f"== round {number}: {name} ({tree})", flush=True)
            subprocess.run([sys.executable, "bench/ipvs_table.py", *bench_args, "--json", str(path)], cwd=tree,
                           env={**os.environ, "PYTHONPATH": str(tree)}, check=True, stdout=subprocess.DEVNULL)
            results[name].append(json.loads(path.read_text())["series"])
    print("\n".join(["", f"A/B of bench/ipvs_table.py, {len(results[names[0]])} rounds, every order "
                         f"(min/median/max over all rounds, ratios to {names[0]})"] + report(results, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
