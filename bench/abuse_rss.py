"""The checkers' memory under hostile real servers: the abuse table, then RSS before and after many rounds.

Every case of tests/netns/hostile_peers.py (endless greetings, 10 MB lines,
drips, invalid UTF-8, stalled or garbage TLS, endless HTTP headers and bodies)
is checked once and printed as a row: the case, the expected reason fragment,
the result and its time. Then all cases run together, ``--rounds`` times, in
one process and one event loop per round (as the director's engine runs many
checks at once), and the process's resident set size (VmRSS) is printed after
a warm-up round and after the last: it must stay flat. The peers run in a
child process, so the figures are the checkers' alone. A report, not a
pass/fail test (the netns tests assert on each case)::

    .venv/bin/python bench/abuse_rss.py --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "netns"))

from hostile_peers import CASES, LOOPBACK, HostilePeer  # noqa: E402

from lvsmail.health.checkers import run_check  # noqa: E402
from lvsmail.spec import CheckSpec  # noqa: E402


def vm_rss_kib() -> int:
    """This process's resident set size in KiB (/proc/self/status VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def one(case, port: int, timeout: float):
    """One check of ``case``: (result, seconds)."""
    started = time.monotonic()
    result = await run_check(CheckSpec(**case.spec_fields(timeout)), LOOPBACK, port)
    return result, time.monotonic() - started


async def round_of(cases_ports, timeout: float):
    """Every case at once; their (result, seconds) in order."""
    return await asyncio.gather(*(one(case, port, timeout) for case, port in cases_ports))


async def rounds(peers, args):
    """A warm-up round, then ``args.rounds`` rounds on this one loop (as the director's engine runs):
    (RSS before, RSS after, checks, checks that passed, seconds)."""
    await round_of(peers, args.timeout)  # warm-up: imports, caches, allocator arenas
    gc.collect()
    before = vm_rss_kib()
    started = time.monotonic()
    checks = passed = 0
    for _ in range(args.rounds):
        results = await round_of(peers, args.timeout)
        checks += len(results)
        passed += sum(r.ok for r, _ in results)
    gc.collect()
    return before, vm_rss_kib(), checks, passed, time.monotonic() - started


def serve() -> None:
    """The child: every case's peer, their ports as one JSON line on stdout, until stdin closes."""
    with contextlib.ExitStack() as stack:
        ports = {case.name: stack.enter_context(HostilePeer(case.behave)).port for case in CASES}
        print(json.dumps(ports), flush=True)
        sys.stdin.read()


def main() -> int:
    """Print the abuse table and the RSS figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds of all cases after the warm-up")
    parser.add_argument("--timeout", type=float, default=2.0, help="each check's timeout (s)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the peers' child process
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(child.stdout.readline())
        peers = [(case, ports[case.name]) for case in CASES]
        print(f"{'case':36} {'ok':3} {'as expected':11} {'elapsed':>8}  reason", flush=True)
        bad = 0
        for case, port in peers:
            result, elapsed = asyncio.run(one(case, port, args.timeout))
            expected = (not result.ok and case.expect in result.reason and elapsed <= args.timeout + 0.5
                        and "checker error" not in result.reason)
            bad += not expected
            reason = result.reason.split(": ", 1)[1]
            print(f"{case.name:36} {'yes' if result.ok else 'no':3} {'yes' if expected else 'NO':11} "
                  f"{elapsed:7.3f}s  {reason[:110]}", flush=True)
        before, after, checks, passed, seconds = asyncio.run(rounds(peers, args))
        bad += passed
    finally:
        child.stdin.close()
        child.wait(10)
    print(f"\n{checks} hostile checks in {args.rounds} rounds on one event loop, {seconds:.1f} s, {passed} passed")
    print(f"VmRSS (checkers' process) after warm-up {before} KiB, after {args.rounds} rounds {after} KiB, "
          f"growth {after - before} KiB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
