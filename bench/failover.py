"""Director failover time: lvsmail's VRRPv3 against keepalived's, SIGKILL of the master, in namespaces.

For each case, ``--runs`` times (the seed's heartbeat pair averaged 4.351 s over 8):
a master (priority 200) and a backup (priority 100) on one bridge, the master
holding VIP 192.0.2.33; the master is killed with SIGKILL (its whole process
group: keepalived's VRRP child too, so it cannot send priority 0) at a random
phase of its advert period (``--seed``), and three times are taken:

* ``vip``: from the kill until the backup's kernel announces the VIP on its
  interface (RTM_NEWADDR, read from an rtnetlink socket in the backup's
  namespace, no polling);
* ``connect``: from the kill until a client on the segment, retrying every
  10 ms, gets a new TCP connection to VIP:25 accepted. Only the backup listens,
  and the killed master's namespace still has the VIP (a killed daemon removes
  nothing) and answers with RST, so success means the client's ARP entry
  followed the backup's gratuitous ARP;
* ``after advert``: from the master's last advert, as a raw socket in the
  backup's namespace received it, until the VIP. This is what the backup
  controls (the master-down interval and its takeover); the two times from the
  kill add where in the advert period the kill fell, which is random.

Without the random phase the kill fell at the same point of the master's period
in every run (the runs are timed from the daemons' start), so a change in
start-up time alone moved every run's figure by the same amount.

Run as root: ``python3 bench/failover.py [--runs 8] [--cases lvsmail:1,keepalived:1,...]``.
A case ``lvsmail@DIR:INTERVAL`` runs the lvsmail of another checkout (a same-run A/B).
Namespaces are prefixed ``vr-bench-`` and removed afterwards. Times are reported,
never asserted (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.report import Series, ab_line, ratio_line, write_json  # noqa: E402
from lvsmail.net import netns  # noqa: E402

PREFIX = f"vr-bench-{os.getpid() % 10000}"
NS = {name: f"{PREFIX}-{name}" for name in ("br", "a", "b", "c")}
ADDR = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.100"}
VIP, PORT = "192.0.2.33", 25
SEED_SECONDS = 4.351
WORK = Path(f"/tmp/{PREFIX}")

LVSMAIL_CLUSTER = """\
cluster: bench-{me}
vips: [{vip}]
services: []
failover:
  interface: eth0
  instances:
    - {{name: mail, vrid: 51, priority: {priority}, advert_interval: {interval}, vips: [{vip}/24]}}
"""
LVSMAIL_NODE = """\
import asyncio, logging, sys
sys.path.insert(0, {repo!r})
from lvsmail.director.daemon import Director, serve
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.net.sysctl import FakeSysctl
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
asyncio.run(serve(Director(sys.argv[1], FakeIPVS(), state_dir=sys.argv[2], sysctl=FakeSysctl())))
"""
KEEPALIVED_CONF = """\
global_defs {{
    router_id bench-{me}
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance mail {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {interval}
    virtual_ipaddress {{
        {vip}/24
    }}
    notify {notify}
}}
"""


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def build() -> None:
    """Bridge in its own namespace, three hosts on it."""
    for name in NS.values():
        netns.create_netns(name)
    ip("link", "add", "br0", "type", "bridge", ns=NS["br"])
    ip("link", "set", "br0", "up", ns=NS["br"])
    for host in ("a", "b", "c"):
        ip("link", "add", f"p{host}", "netns", NS["br"], "type", "veth", "peer", "name", "eth0", "netns", NS[host])
        ip("link", "set", f"p{host}", "master", "br0", "up", ns=NS["br"])
        ip("addr", "add", f"{ADDR[host]}/24", "dev", "eth0", ns=NS[host])
        ip("link", "set", "eth0", "up", ns=NS[host])
        ip("link", "set", "lo", "up", ns=NS[host])


def teardown() -> None:
    for name in NS.values():
        netns.remove_netns(name)


def has_vip(host: str) -> bool:
    return f" {VIP}/" in ip("-o", "addr", "show", "dev", "eth0", ns=NS[host])


def wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.02)


class Daemon:
    """One VRRP speaker (lvsmail or keepalived) in a host's namespace, in its own process group."""

    def __init__(self, tool: str, host: str, priority: int, interval: float, run: int) -> None:
        self.tool, self.host = tool.split("@")[0], host
        self.dir = WORK / f"{tool.replace('/', '_')}-{interval}-{run}-{host}"
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.tool == "lvsmail":
            conf = self.dir / "cluster.yaml"
            conf.write_text(LVSMAIL_CLUSTER.format(me=host, vip=VIP, priority=priority, interval=interval))
            node = self.dir / "node.py"
            tree = tool.split("@", 1)[1] if "@" in tool else str(REPO)  # lvsmail@DIR: that checkout's lvsmail
            node.write_text(LVSMAIL_NODE.format(repo=tree))
            cmd = [sys.executable, str(node), str(conf), str(self.dir / "state")]
        else:
            notify = self.dir / "notify.sh"
            notify.write_text(f"#!/bin/sh\necho \"$3\" >> {self.dir / 'roles'}\n")
            notify.chmod(0o700)
            conf = self.dir / "keepalived.conf"
            conf.write_text(KEEPALIVED_CONF.format(me=host, vip=VIP, priority=priority, interval=interval,
                                                   notify=notify))
            cmd = ["keepalived", "--dont-fork", "--log-console", "--vrrp", "-f", str(conf),
                   "-p", str(self.dir / "k.pid"), "-r", str(self.dir / "v.pid")]
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS[host], *cmd], stdout=self.log, stderr=self.log,
                                     start_new_session=True)

    def role(self) -> str | None:
        try:
            if self.tool == "lvsmail":
                data = json.loads((self.dir / "state" / "cluster.failover.json").read_text())
                return data["instances"][0]["role"]
            return (self.dir / "roles").read_text().split()[-1].lower()
        except (OSError, ValueError, IndexError, KeyError):
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group at once (keepalived's parent cannot restart its child)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def vip_watch(ns: str) -> socket.socket:
    """An rtnetlink socket in ``ns`` subscribed to IPv4 address changes (RTMGRP_IPV4_IFADDR)."""
    s = netns.socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    s.bind((0, 0x10))
    return s


def wait_new_vip(s: socket.socket, deadline: float) -> float:
    """Block until an RTM_NEWADDR for the VIP arrives; its arrival time (monotonic)."""
    want = socket.inet_aton(VIP)
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(65536)
        now = time.monotonic()
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if kind == 20:  # RTM_NEWADDR: ifaddrmsg (8 bytes) then attributes
                at = off + 16 + 8
                while at + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, at)
                    if atype in (1, 2) and data[at + 4:at + alen] == want:  # IFA_ADDRESS / IFA_LOCAL
                        return now
                    at += (alen + 3) & ~3
            off += (length + 3) & ~3 if length else len(data)


def client_connect(deadline: float, box: dict) -> None:
    """From the client's namespace: retry a TCP connect to the VIP every 10 ms; record the first success."""
    while time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(0.05)
        try:
            s.connect((VIP, PORT))
            box["connect"] = time.monotonic()
            return
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()


def listener() -> socket.socket:
    """The backup's service on VIP:25 (bound to any address, so it answers once the VIP arrives)."""
    s = netns.socket_in_netns(NS["b"], socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", PORT))
    s.listen(64)
    return s


class AdvertWatch:
    """The arrival times of the master's adverts in the backup's namespace (a raw IPPROTO_VRRP socket)."""

    def __init__(self, ns: str, master: str) -> None:
        self.sock = netns.socket_in_netns(ns, socket.AF_INET, socket.SOCK_RAW, 112)
        self.sock.settimeout(0.05)
        self.master, self.times, self.stopped = master, [], False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopped:
            try:
                data, (source, _) = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if source == self.master:
                self.times.append(time.monotonic())

    def last_before(self, t: float) -> float:
        """The last advert from the master received before ``t`` (monotonic)."""
        return max(x for x in self.times if x <= t)

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()


def one_run(tool: str, interval: float, run: int, phase: float) -> tuple[float, float, float]:
    """(seconds to VIP on the backup, to a client's connection answered by it, both after SIGKILL; and
    seconds from the master's last advert to the VIP). ``phase`` (0-1) places the kill in the advert period."""
    for host in ("a", "b"):
        ip("addr", "del", f"{VIP}/24", "dev", "eth0", ns=NS[host], check=False)
    master = Daemon(tool, "a", 200, interval, run)
    backup = None
    try:
        wait(lambda: master.role() == "master" and has_vip("a"), 30, "master up")
        backup = Daemon(tool, "b", 100, interval, run)
        wait(lambda: backup.role() == "backup", 30, "backup up")
        adverts = AdvertWatch(NS["b"], ADDR["a"])
        time.sleep(max(0.5, 4 * interval) + phase * interval)  # the backup has heard the master several times
        # the client's ARP entry points at the master: a first connect is refused by it (nobody listens there)
        netns.run_in_netns(NS["c"], client_connect, time.monotonic() + 0.2, {})
        watch = vip_watch(NS["b"])
        box: dict = {}
        deadline = time.monotonic() + 30
        t0 = time.monotonic()
        master.kill()
        client = netns.start_in_netns(NS["c"], client_connect, deadline, box)
        vip_at = wait_new_vip(watch, deadline)
        watch.close()
        adverts.close()
        client.join()
        if "connect" not in box:
            raise TimeoutError("client never connected")
        return vip_at - t0, box["connect"] - t0, vip_at - adverts.last_before(t0)
    finally:
        for d in (master, backup):
            if d is not None:
                d.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--cases", default="lvsmail:1,keepalived:1,lvsmail:0.1,keepalived:0.1,lvsmail:0.03",
                        help="tool:advert-interval pairs")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--seed", type=int, default=1, help="the kills' phases (the same for every case)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    cases = [(c.rsplit(":", 1)[0], float(c.rsplit(":", 1)[1])) for c in args.cases.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    build()
    series: dict[tuple[str, str, float], Series] = {}
    try:
        lis = listener()
        for tool, interval in cases:
            vip = series.setdefault(("vip", tool, interval), Series(f"VIP on backup, adverts {interval:g} s", tool))
            con = series.setdefault(("connect", tool, interval),
                                    Series(f"client connect, adverts {interval:g} s", tool))
            adv = series.setdefault(("advert", tool, interval),
                                    Series(f"VIP after the last advert, adverts {interval:g} s", tool))
            phases = random.Random(args.seed)  # every case kills at the same sequence of phases
            for run in range(args.runs):
                v, c, a = one_run(tool, interval, run, phases.random())
                vip.samples.append(v)
                con.samples.append(c)
                adv.samples.append(a)
                print(f"{tool:<10} advert {interval:<5g} run {run + 1}: VIP {v * 1000:7.1f} ms, "
                      f"connect {c * 1000:7.1f} ms, after the last advert {a * 1000:7.1f} ms", flush=True)
        lis.close()
    finally:
        teardown()
    print()
    verdicts = []
    for (kind, tool, interval), s in series.items():
        if tool.startswith("lvsmail@"):  # an A/B: against this checkout's lvsmail
            ref = series.get((kind, "lvsmail", interval))
            if ref is not None:
                print(ab_line(ref, s))
            continue
        if tool != "lvsmail" or kind == "advert":
            continue
        ref = series.get((kind, "keepalived", interval))
        seed = Series(s.case, "seed heartbeat", [SEED_SECONDS])
        if ref is not None:
            met = s.median <= ref.median * 1.1
            print(ratio_line(s, ref, "no slower than keepalived (+10 % noise)", met))
            verdicts.append({"case": s.case, "vs": "keepalived", "ratio": s.median / ref.median, "met": met})
        goal, met = ("< 0.15 s", s.median < 0.15) if interval <= 0.03 else ("< seed 4.351 s", s.median < SEED_SECONDS)
        print(ratio_line(s, seed, goal, met))
        verdicts.append({"case": s.case, "vs": "seed", "ratio": s.median / SEED_SECONDS, "met": met})
    if args.json:
        write_json(args.json, list(series.values()), verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
