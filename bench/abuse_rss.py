"""The checkers' memory under hostile real servers: the abuse table, then RSS before and after many rounds.

Every case of tests/netns/hostile_peers.py (endless greetings, 10 MB lines,
drips, invalid UTF-8, stalled or garbage TLS, endless HTTP headers and bodies)
is checked once and printed as a row: the case, the expected reason fragment,
the result and its time. Then all cases run together, ``--rounds`` times, in
one process and one event loop per round (as the director's engine runs many
checks at once), and the process's resident set size (VmRSS) is printed after
a warm-up round and after the last: it must stay flat. A report, not a
pass/fail test (the netns tests assert on each case)::

    .venv/bin/python bench/abuse_rss.py --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
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


def main() -> int:
    """Print the abuse table and the RSS figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds of all cases after the warm-up")
    parser.add_argument("--timeout", type=float, default=2.0, help="each check's timeout (s)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        peers = [(case, stack.enter_context(HostilePeer(case.behave)).port) for case in CASES]
        print(f"{'case':36} {'ok':3} {'as expected':11} {'elapsed':>8}  reason")
        bad = 0
        for case, port in peers:
            result, elapsed = asyncio.run(one(case, port, args.timeout))
            expected = (not result.ok and case.expect in result.reason and elapsed <= args.timeout + 0.5
                        and "checker error" not in result.reason)
            bad += not expected
            reason = result.reason.split(": ", 1)[1]
            print(f"{case.name:36} {'yes' if result.ok else 'no':3} {'yes' if expected else 'NO':11} "
                  f"{elapsed:7.3f}s  {reason[:110]}")
        asyncio.run(round_of(peers, args.timeout))  # warm-up: imports, caches, allocator arenas
        gc.collect()
        before = vm_rss_kib()
        started = time.monotonic()
        checks = 0
        for _ in range(args.rounds):
            results = asyncio.run(round_of(peers, args.timeout))
            checks += len(results)
            bad += sum(r.ok for r, _ in results)
        gc.collect()
        after = vm_rss_kib()
    print(f"\n{checks} hostile checks in {args.rounds} rounds, {time.monotonic() - started:.1f} s")
    print(f"VmRSS after warm-up {before} KiB, after {args.rounds} rounds {after} KiB, "
          f"growth {after - before} KiB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
