"""Benchmark: programming and reading the IPVS table, lvsmail beside ipvsadm and pyroute2.

Cases (issue 2), all in one run, in a private network namespace so a director's
real table is never touched:
  * full apply of N services x 16 real servers from empty: lvsmail's reconciler vs ``ipvsadm -R``;
  * one weight change: decision → kernel through the reconciler, vs pyroute2's
    bare ``dest("set")`` and vs ``ipvsadm -e`` (a process per change, as scripts do);
  * a full read for a drift check: lvsmail's dump vs ``ipvsadm -Sn``.
lvsmail is timed in-process (the director is a long-running daemon); ipvsadm
includes its process start, which is what a script using it pays.

Run it in the lab:  deploy/lab/run python3 bench/ipvs_table.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import Series, in_private_netns, ratio_line, write_json  # noqa: E402
from lvsmail.director.reconcile import Reconciler  # noqa: E402
from lvsmail.ipvs.model import (  # noqa: E402
    DestEntry,
    DestKey,
    DestSettings,
    ServiceEntry,
    ServiceKey,
    ServiceSettings,
    Table,
)
from lvsmail.ipvs.netlink import NetlinkIPVS  # noqa: E402

VIP = "192.0.2.33"
DESTS = 16


def desired(n_services: int) -> Table:
    """N TCP services on the VIP (ports 10000+i), each with 16 tunnelled real servers."""
    table: Table = {}
    for i in range(n_services):
        port = 10000 + i
        key = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, VIP, port)
        table[key] = ServiceEntry(
            ServiceSettings("wlc"),
            {DestKey(f"198.51.100.{j + 1}", port): DestEntry(DestSettings("tun", 1)) for j in range(DESTS)},
        )
    return table


def ipvsadm_rules(n_services: int) -> str:
    """The same table as ``ipvsadm -R`` input."""
    lines = []
    for i in range(n_services):
        port = 10000 + i
        lines.append(f"-A -t {VIP}:{port} -s wlc")
        lines += [f"-a -t {VIP}:{port} -r 198.51.100.{j + 1}:{port} -i -w 1" for j in range(DESTS)]
    return "\n".join(lines) + "\n"


def ipvsadm(*args: str, stdin: str | None = None) -> str:
    """Run ipvsadm (the reference tool), failing loudly."""
    done = subprocess.run(["ipvsadm", *args], input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ipvsadm {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout


def count_dests(backend: NetlinkIPVS) -> int:
    """Real servers in the kernel, to check every tool really built the table."""
    return sum(len(s.dests) for s in backend.dump_sync().values())


def emit(lines: list[str], line: str) -> None:
    """Print a result as soon as it is measured (a long run may be cut short) and keep it for the summary."""
    print(line, flush=True)
    lines.append(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", default="100,1000", help="comma-separated table sizes (services)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--weight-repeat", type=int, default=30)
    ap.add_argument("--json", help="write results here too")
    args = ap.parse_args()
    status = in_private_netns()
    if status is not None:
        return status
    backend = NetlinkIPVS()
    series: list[Series] = []
    verdicts: list[dict] = []
    lines: list[str] = []
    sizes = [int(x) for x in args.services.split(",")]
    for n in sizes:
        want = desired(n)
        rules = ipvsadm_rules(n)
        ours = Series(f"full apply {n}x{DESTS}", "lvsmail reconcile")
        ref = Series(f"full apply {n}x{DESTS}", "ipvsadm -R")
        for _ in range(args.repeat):
            ipvsadm("-C")
            with ref.timed():
                ipvsadm("-R", stdin=rules)
            assert count_dests(backend) == n * DESTS, "ipvsadm -R did not build the table"
            ipvsadm("-C")
            r = Reconciler(backend)
            with ours.timed():
                asyncio.run(r.sync(want, refresh=True))
            assert count_dests(backend) == n * DESTS, "lvsmail did not build the table"
        ok = ours.median <= 1.5 * ref.median
        emit(lines, ratio_line(ours, ref, "<= 1.5x", ok))
        verdicts.append({"case": ours.case, "ratio": ours.median / ref.median, "goal": 1.5, "met": ok})
        series += [ours, ref]

        # Full read (drift check) on the table lvsmail just built.
        read = Series(f"full read {n}x{DESTS}", "lvsmail dump")
        read_ref = Series(f"full read {n}x{DESTS}", "ipvsadm -Sn")
        for _ in range(args.repeat):
            with read_ref.timed():
                out = ipvsadm("-Sn")
            with read.timed():
                table = backend.dump_sync()
        assert out.count("\n-a ") == n * DESTS and sum(len(s.dests) for s in table.values()) == n * DESTS
        ok = read.median <= 2 * read_ref.median
        emit(lines, ratio_line(read, read_ref, "<= 2x", ok))
        verdicts.append({"case": read.case, "ratio": read.median / read_ref.median, "goal": 2.0, "met": ok})
        series += [read, read_ref]

        if n == max(sizes):
            for line in weight_change(backend, r, want, n, args.weight_repeat, series, verdicts):
                emit(lines, line)
    backend.close_sync()
    print("\n".join(["", "IPVS table benchmark (min/median/max)"] + lines), flush=True)
    if args.json:
        write_json(args.json, series, verdicts)
    return 0


def weight_change(backend, r: Reconciler, want: Table, n: int, repeat: int, series, verdicts) -> list[str]:
    """One weight change on a loaded table: reconciler vs bare pyroute2 vs ipvsadm -e."""
    from pyroute2 import IPVS, IPVSDest, IPVSService  # the reference; imported only here (slow)

    case = f"weight change ({n}x{DESTS} loaded)"
    key = sorted(want)[n // 2]
    dkey = sorted(want[key].dests)[DESTS // 2]
    ours, bare, cli = Series(case, "lvsmail reconcile"), Series(case, "pyroute2 dest(set)"), Series(case, "ipvsadm -e")
    ipvs = IPVS()
    svc = IPVSService(addr=VIP, port=key.port, protocol=socket.IPPROTO_TCP)

    loop = asyncio.new_event_loop()  # one loop for all changes, as in the running director
    for i in range(repeat):
        w = 2 + i % 50
        with ours.timed():
            want[key].dests[dkey] = DestEntry(DestSettings("tun", w))  # the decision
            loop.run_until_complete(r.sync(want, only={key}))
        assert backend.dests_sync(key).dests[dkey].settings.weight == w
        with bare.timed():
            ipvs.dest("set", service=svc, dest=IPVSDest(addr=dkey.addr, port=dkey.port, weight=w + 1, fwd_method=2))
        with cli.timed():
            ipvsadm("-e", "-t", f"{VIP}:{key.port}", "-r", f"{dkey.addr}:{dkey.port}", "-i", "-w", str(w + 2))
        assert backend.dests_sync(key).dests[dkey].settings.weight == w + 2
    loop.close()
    ipvs.close()
    ok1 = ours.median <= 1.5 * bare.median
    ok2 = ours.median * 10 <= cli.median
    verdicts += [
        {"case": case + " vs pyroute2", "ratio": ours.median / bare.median, "goal": 1.5, "met": ok1},
        {"case": case + " vs ipvsadm -e", "ratio": cli.median / ours.median, "goal": "faster by >= 10x", "met": ok2},
    ]
    series += [ours, bare, cli]
    return [ratio_line(ours, bare, "<= 1.5x", ok1), ratio_line(ours, cli, "<= 0.1x", ok2)]


if __name__ == "__main__":
    sys.exit(main())
