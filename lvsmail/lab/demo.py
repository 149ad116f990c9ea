"""``lvsmail lab demo``: a TUN mail cluster in namespaces, 30 messages through the VIP.

Builds the lab topology (client, router, director, four real servers), writes a
cluster file like the example one (SMTP on the VIP 192.0.2.33, WLC, IP-in-IP,
persistence 120 s), starts ``lvsmail director start`` in the director's namespace,
runs an SMTP sink in every real server, sends the messages from four client
addresses (persistence is per client address, so one client alone would always
land on the same server), then shows ``lvsmail director status`` and what each
real server received, and tears everything down.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from lvsmail.lab.topology import CLIENT, CLIENT_EXTRA


def _say(msg: str) -> None:
    """Progress line, flushed (the VM console buffers otherwise)."""
    print(msg, flush=True)


def run_demo(messages: int = 30, mode: str = "tun", reals: int = 4, out_dir: Path | None = None) -> int:
    """Run the demo here (needs root and IPVS); return the exit status (0 when every message got through)."""
    from lvsmail.lab.cluster import LabDirector, LabService, cluster_yaml
    from lvsmail.lab.smtp import SmtpSinks, send_messages
    from lvsmail.lab.topology import Topology

    started = time.monotonic()
    out_dir = out_dir or Path(os.environ.get("LVSMAIL_LAB_OUT") or tempfile.mkdtemp(prefix="lvsmail-demo-"))
    topo = Topology(mode, reals=reals)
    workdir = out_dir / f"demo-{topo.prefix}"
    workdir.mkdir(parents=True, exist_ok=True)
    service = LabService("smtp", 25, {rs.role: 1 for rs in topo.reals}, persistent=120, check=True)
    config = workdir / "cluster.yaml"
    config.write_text(cluster_yaml(topo, [service], name="clustermail-lab"))
    director = LabDirector(topo, config, workdir)
    try:
        # The director is started as soon as its namespace exists: under emulation
        # its start-up (interpreter and imports) takes longer than wiring the links.
        topo.create_namespaces()
        _say(f"cluster file: {config}")
        _say("starting lvsmail director start in the director namespace ...")
        director.start()
        topo.wire()
        _say(f"topology: {topo.describe()}")
        with SmtpSinks([(rs.role, rs.ns) for rs in topo.reals], ports=(25,)) as sinks:
            key = f"TCP {topo.vip}:25"
            director.wait_for(lambda t: key in t and len(t[key].dests) == len(topo.reals), timeout=300,
                              what=f"{key} with {len(topo.reals)} real servers")
            _say(f"director ready after {time.monotonic() - started:.0f} s; sending {messages} messages ...")
            sources = [CLIENT, *CLIENT_EXTRA]
            report = send_messages(topo.client.ns, topo.vip, 25, count=messages, sources=sources)
            _say(f"sent {report.sent}/{messages} messages in {report.seconds:.1f} s "
                 f"from {len(sources)} client addresses")
            for r in report.results:
                if not r.ok:
                    _say(f"  failed from {r.source}: {r.error}")
            # IPVS folds its per-CPU traffic counters into the totals on a 2 s timer.
            time.sleep(2.5)
            _say("\n$ lvsmail director status")
            print_status(topo)
            counts = sinks.counts()
            _say("\nmessages received per real server:")
            for rs in topo.reals:
                _say(f"  {rs.role} {rs.address:<15} {counts.get(rs.role, 0):>3}")
            total = sum(counts.values())
            _say(f"  total {total:>19}")
        director.stop()
    finally:
        director.stop()
        topo.close()
    _say(f"\ntorn down; demo took {time.monotonic() - started:.0f} s")
    return 0 if report.sent == messages and total == messages else 1


def print_status(topo) -> None:
    """Run the ``lvsmail director status`` command in this process, inside the director namespace.

    Same command and output as a separate ``lvsmail director status``, without paying
    another interpreter start-up (tens of seconds under emulation).
    """
    from lvsmail.commands.director import status

    topo.call(topo.director, status.main, args=[], prog_name="lvsmail director status", standalone_mode=False)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the demo here if this kernel can, else inside the lab VM (same arguments)."""
    import argparse

    from lvsmail.lab import vm

    parser = argparse.ArgumentParser(prog="python3 -m lvsmail.lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--mode", choices=("tun", "dr", "nat"), default="tun")
    parser.add_argument("--reals", type=int, default=4)
    args = parser.parse_args(argv)
    if os.environ.get("LVSMAIL_IN_LAB") == "1" or vm.host_capability().ok:
        return run_demo(messages=args.messages, mode=args.mode, reals=args.reals)
    cmd = [sys.executable, "-m", "lvsmail.lab.demo", "--messages", str(args.messages), "--mode", args.mode,
           "--reals", str(args.reals)]
    return vm.run(cmd, timeout=900)


if __name__ == "__main__":
    sys.exit(main())
