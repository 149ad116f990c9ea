"""Director failover with connection sync (lab, real IPVS): an SMTP session survives a director takeover.

Two directors sit side by side on both segments of a TUN or DR lab (one
topology per method, built by this module). Both run ``lvsmail director start``
with the same services and a ``sync:`` section: director 1 runs the master
sync daemon, director 2 the backup, on the inside interface. A client opens an
SMTP session through the VIP (held by director 1) and gets as far as ``MAIL``
(RFC 5321 §3.3). By then director 2's kernel must hold the connection, marked
as learnt from sync (/proc/net/ip_vs_conn_sync, origin ``SYNC``).

Then director 1 dies: its process is killed with SIGKILL and its links are set
down, as a crashed machine's, so nothing can reach it any more. Director 2
takes over. With lvsmail's VRRP (``failover:`` section, one instance with
``sync: true``, sync ``role: auto``) director 2 notices the missing adverts,
adds the VIP, announces it and becomes sync master by itself. Without it
(``LVSMAIL_FAILOVER_TAKEOVER=manual``, or an lvsmail without failover) the test
does the same steps: the VIP is added and announced with gratuitous ARP, and
:class:`lvsmail.director.sync.SyncRole` — the call the VRRP resource group
makes — runs with our netlink backend in director 2's namespace. The client, on
the same socket, finishes ``RCPT``/``DATA``/``QUIT``; the message must arrive at
the real server that greeted it, with the client's address as the peer.

Along the way: ``ipvsadm -L --daemon`` on each director shows the daemon we
started through netlink, and ``lvsmail director status --json`` on director 2
reports the kernel profile as applied and the backup daemon.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lvsmail.lab.cluster import LabDirector, LabService, cluster_yaml, lvsmail_argv, parse_proc_ip_vs
from lvsmail.lab.smtp import SmtpSinks
from lvsmail.lab.topology import CLIENT, Topology, wait_until

pytestmark = pytest.mark.kernel

SMTP_PORT = 25
SYNC_IFACE, SYNC_ID = "eth1", 7  # the inside segment carries the sync multicast
#: Functional deadlines: generous, everything in the VM is ~10× slower and the machine is shared.
READY, SYNCED, TAKEOVER = 600.0, 60.0, 60.0
#: VRRP advert interval (s) of the pair; master-down interval is about 3.6 × this (RFC 5798 §6.1).
ADVERT = 1


def _takeover_method() -> str:
    """``vrrp`` when this lvsmail has director failover, else ``manual`` (or as LVSMAIL_FAILOVER_TAKEOVER says)."""
    forced = os.environ.get("LVSMAIL_FAILOVER_TAKEOVER")
    if forced:
        return forced
    import importlib.util

    from lvsmail.config.loader import SECTIONS

    if importlib.util.find_spec("lvsmail.failover") is None:
        return "manual"
    return "vrrp" if "failover" in SECTIONS else "manual"


class PairDirector(LabDirector):
    """``lvsmail director start`` in one director of a pair (LabDirector drives the first only)."""

    def __init__(self, topo: Topology, node, config: Path, workdir: Path) -> None:
        super().__init__(topo, config, workdir)
        self.node = node

    def start(self) -> PairDirector:
        """Start in this director's namespace, logging to its own file."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            argv = lvsmail_argv("director", "start", "-c", str(self.config), "--repair-interval", "1",
                                "--state-dir", str(self.state_dir))
            self.proc = self.topo.popen(self.node, argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def state_dir(self) -> Path:
        """Where this director publishes health and its kernel profile."""
        return self.workdir / "state"

    def read(self, name: str) -> str:
        """A file of /proc/net as this director's namespace shows it."""
        return self.topo.call(self.node, lambda: Path(f"/proc/thread-self/net/{name}").read_text())

    def table(self):
        """This director's IPVS table from /proc/net/ip_vs."""
        return parse_proc_ip_vs(self.read("ip_vs"))

    def kill(self) -> None:
        """SIGKILL, as a crash: no cleanup runs (the VIP and the kernel state stay behind)."""
        import os

        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def status_json(self) -> dict:
        """``lvsmail director status --json`` in this director's namespace, with its state directory."""
        import json

        done = self.topo.run(self.node, lvsmail_argv("director", "status", "--json", "--state-dir",
                                                     str(self.state_dir)), check=False, timeout=180)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def sync_conns(text: str, client: str, vip: str, port: int) -> list[dict]:
    """Lines of /proc/net/ip_vs_conn_sync for one client to the VIP, as dicts.

    Columns: Pro FromIP FPrt ToIP TPrt DestIP DPrt State Origin Expires (IPv4 in hex).
    """
    out = []
    for line in text.splitlines()[1:]:
        p = line.split()
        if len(p) < 10 or p[0] != "TCP":
            continue
        if (_ip(p[1]), _ip(p[3]), int(p[4], 16)) == (client, vip, port):
            out.append({"cport": int(p[2], 16), "dest": _ip(p[5]), "state": p[7], "origin": p[8]})
    return out


def _ip(hexaddr: str) -> str:
    return socket.inet_ntoa(int(hexaddr, 16).to_bytes(4, "big")) if len(hexaddr) == 8 else hexaddr


class Dialogue:
    """A plain SMTP client on one socket, step by step (RFC 5321 §4.2: multi-line replies end with "NNN ")."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def reply(self) -> tuple[int, str]:
        """Read one whole reply; (code, text of all lines)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"connection closed after {lines!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(x[4:] for x in lines)

    def command(self, line: str, expect: int) -> str:
        """Send a command and check the reply code."""
        self.sock.sendall(line.encode() + b"\r\n")
        code, text = self.reply()
        assert code == expect, f"{line!r}: expected {expect}, got {code} {text}"
        return text


def _cluster_file(topo: Topology, services: list[LabService], role: str, priority: int | None) -> str:
    """The pair's file: same services, sync on the inside link; with ``priority`` a VRRP instance too."""
    text = cluster_yaml(topo, services, name="pair") + (
        f"sync:\n  interface: {SYNC_IFACE}\n  syncid: {SYNC_ID}\n  role: {role}\n"
        "kernel:\n  expire_nodest_conn: 1\n  expire_quiescent_template: 1\n")
    if priority is not None:
        text += ("failover:\n  interface: eth0\n  instances:\n"
                 f"    - {{name: mail, vrid: 51, priority: {priority}, advert_interval: {ADVERT},"
                 f" vips: [{topo.vip}/24], sync: true}}\n")
    return text


def _become_master(interface: str, syncid: int) -> None:
    """In director 2's namespace: what the VRRP resource group calls on MASTER."""
    from lvsmail.director.sync import SyncRole
    from lvsmail.ipvs.netlink import NetlinkIPVS
    from lvsmail.spec import SyncSpec

    async def go() -> None:
        backend = NetlinkIPVS()
        try:
            await SyncRole(backend, SyncSpec(interface, syncid=syncid)).become_master()
        finally:
            await backend.close()

    asyncio.run(go())


def _announce(interface: str, address: str) -> None:
    """Gratuitous ARP for the VIP (RFC 5798 §6.4.2): a broadcast ARP request whose sender and target
    are both the VIP (RFC 5227 §3), three times, so the router replaces its cached MAC."""
    import struct

    eth_p_arp = 0x0806
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_arp)) as s:
        s.bind((interface, eth_p_arp))
        mac = s.getsockname()[4][:6]
        ip = socket.inet_aton(address)
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
        for _ in range(3):
            s.send(b"\xff" * 6 + mac + struct.pack("!H", eth_p_arp) + arp)
            time.sleep(0.1)


@pytest.mark.parametrize("case", ["tun", "dr"])
def test_established_smtp_session_survives_director_takeover(case, lab_ok, lab_out, capsys):
    method = _takeover_method()
    vrrp = method == "vrrp"
    topo = Topology(case, reals=2, directors=2, vip_on=None if vrrp else 1)
    work = lab_out / f"failover-{case}-{topo.prefix}"
    work.mkdir(parents=True, exist_ok=True)
    services = [LabService("smtp", SMTP_PORT, {rs.role: 1 for rs in topo.reals})]
    d1node, d2node = topo.directors
    pair = []
    for number, (node, role, priority) in enumerate(((d1node, "master", 150), (d2node, "backup", 100)), 1):
        config = work / f"director{number}.yaml"
        config.write_text(_cluster_file(topo, services, "auto" if vrrp else role, priority if vrrp else None))
        pair.append(PairDirector(topo, node, config, work / f"director{number}"))
    d1, d2 = pair
    sinks = None
    sock = None
    try:
        t0 = time.monotonic()
        topo.create_namespaces()
        d1.start()
        d2.start()
        topo.wire()
        sinks = SmtpSinks([(rs.role, rs.ns) for rs in topo.reals], ports=(SMTP_PORT,)).start()
        key = f"TCP {topo.vip}:{SMTP_PORT}"
        for d in pair:
            wait_until(lambda d=d: (d.alive() or _died(d)) and key in (t := d.table()) and len(t[key].dests) == 2,
                       READY, interval=0.5, what=f"{d.workdir.name}'s services")
        # The daemons run once the table is programmed; ipvsadm reads them back through its own netlink code.
        shown = {}
        for number, d in enumerate(pair, 1):
            want = "master" if number == 1 else "backup"
            shown[number] = wait_until(
                lambda d=d, want=want: (out := topo.run(d.node, ["ipvsadm", "-L", "--daemon"]).stdout)
                and f"{want} sync daemon" in out and out, READY, interval=0.5, what=f"director {number}'s daemon")
            assert re.search(rf"{want} sync daemon \(mcast={SYNC_IFACE}, syncid={SYNC_ID},", shown[number]), shown
        ready = time.monotonic() - t0

        status = d2.status_json()
        profile = {r["name"]: r for r in status["kernel"]["sysctls"]}
        assert profile["expire_nodest_conn"]["value"] == "1" and profile["expire_nodest_conn"]["ok"]
        assert status["kernel"]["ok"], status["kernel"]
        assert [(x["state"], x["interface"], x["syncid"]) for x in status["sync"]["daemons"]] == [
            ("backup", SYNC_IFACE, SYNC_ID)]
        assert status["sync"]["roles"][0]["role"] == "backup"

        # The session, via director 1, up to MAIL (RFC 5321 §3.3).
        sock = topo.socket(topo.client, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.bind((CLIENT, 0))
        sock.connect((topo.vip, SMTP_PORT))
        cport = sock.getsockname()[1]
        smtp = Dialogue(sock)
        code, greeting = smtp.reply()
        assert code == 220, greeting
        server = greeting.split()[0]
        smtp.command("EHLO client.example.org", 250)
        smtp.command("MAIL FROM:<lab@example.org>", 250)

        # Director 2 learnt the connection from director 1's sync daemon, before anything failed.
        t_sync = time.monotonic()
        mine = wait_until(lambda: [c for c in sync_conns(d2.read("ip_vs_conn_sync"), CLIENT, topo.vip, SMTP_PORT)
                                   if c["cport"] == cport], SYNCED, interval=0.3,
                          what="the session in director 2's connection table")
        synced_after = time.monotonic() - t_sync
        dest = topo.node(server).address
        assert mine[0]["origin"] == "SYNC" and mine[0]["dest"] == dest and mine[0]["state"] == "ESTABLISHED", mine
        local = sync_conns(d1.read("ip_vs_conn_sync"), CLIENT, topo.vip, SMTP_PORT)
        assert any(c["cport"] == cport and c["origin"] == "LOCAL" for c in local), local

        # Director 1 dies; director 2 takes the VIP and the master role.
        t_kill = time.monotonic()
        d1.kill()
        for link in ("eth0", "eth1"):
            topo.run(d1node, ["ip", "link", "set", link, "down"])
        if vrrp:
            out = wait_until(lambda: (o := topo.run(d2node, ["ipvsadm", "-L", "--daemon"]).stdout)
                             and "master sync daemon" in o and o, TAKEOVER, interval=0.2,
                             what="director 2's VRRP takeover (master sync daemon)")
            assert topo.vip in topo.run(d2node, ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout
        else:
            topo.run(d2node, ["ip", "addr", "add", f"{topo.vip}/24", "dev", "eth0"])
            topo.call(d2node, _announce, "eth0", topo.vip)
            topo.call(d2node, _become_master, SYNC_IFACE, SYNC_ID)
            out = topo.run(d2node, ["ipvsadm", "-L", "--daemon"]).stdout
        takeover = time.monotonic() - t_kill
        assert "master sync daemon" in out and "backup sync daemon" not in out, out

        # The same socket finishes the transaction on the same real server (RFC 5321 §3.3, §4.1.1.4).
        t_resume = time.monotonic()
        smtp.command("RCPT TO:<user@example.org>", 250)
        smtp.command("DATA", 354)
        sock.sendall(b"From: lab@example.org\r\nTo: user@example.org\r\nSubject: failover\r\n\r\n"
                     b"Sent across a director takeover.\r\n.\r\n")
        code, text = smtp.reply()
        assert code == 250, text
        smtp.command("QUIT", 221)
        resumed = time.monotonic() - t_resume
        got = wait_until(lambda: [x for x in sinks.deliveries if x.rcpt_tos == ("user@example.org",)], 10,
                         what="the message at a sink")
        assert [(x.server, x.peer) for x in got] == [(server, CLIENT)]
        after = [c for c in sync_conns(d2.read("ip_vs_conn_sync"), CLIENT, topo.vip, SMTP_PORT) if c["cport"] == cport]
        assert after and after[0]["dest"] == dest, after  # director 2 forwarded the rest of it
        with capsys.disabled():
            print(f"\n[{case}, takeover by {method}] pair ready {ready:.1f} s; "
                  f"session synced to director 2 within {synced_after:.1f} s;"
                  f" takeover (kill → VIP + master role) {takeover:.1f} s; RCPT..QUIT after takeover {resumed:.1f} s;"
                  f" message delivered by {server} via director 2")
    finally:
        if sock is not None:
            sock.close()
        if sinks is not None:
            sinks.stop()
        for d in pair:
            if d.alive():
                d.stop()
        topo.close()


def _died(d: PairDirector):
    raise RuntimeError(f"lvsmail director exited with {d.proc.returncode}:\n{d.log_tail()}")
