"""``lvsmail realserver join`` and ``leave`` against the real kernel (lab): TUN, registration, drain.

Its own topology (TUN, two real servers): rs1 is prepared by the lab and listed in
the cluster file; rs2 starts bare (no VIP on tunl0, kernel-default sysctls) and is
not in the file. The director runs with the registration API on its inside address.

1. ``realserver join`` in rs2's namespace loads ipip, puts the VIP on tunl0, sets the
   ARP and rp_filter sysctls, writes its persistence files (under a temporary root)
   and registers rs2; the director adds it to IPVS, and client SMTP sessions through
   the VIP land on it.
2. With a session held open on rs2, ``realserver leave`` drains: rs2's weight goes to
   0, new sessions all land on rs1, the held session still answers; once it closes,
   leave deregisters, rs2 leaves the table and tunl0 loses the VIP.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from lvsmail.lab import vm

pytestmark = pytest.mark.kernel

PORT = 25
DEADLINE = 120.0  # seconds for a change to reach the kernel under emulation (generous: shared machine)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The topology, the director with the registration API, SMTP sinks on both real servers."""
    cap = vm.host_capability()
    if not cap.ok:
        pytest.skip(f"{cap.reason}; run in the lab: deploy/lab/run -- python3 -m pytest {__file__}")
    from lvsmail.lab.cluster import LabDirector
    from lvsmail.lab.smtp import SmtpSinks
    from lvsmail.lab.topology import DIRECTOR_INSIDE, Topology

    work = Path(os.environ.get("LVSMAIL_LAB_OUT") or tmp_path_factory.mktemp("rjlab")) / f"rj-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    topo = Topology("tun", reals=2, prefix=f"rj{os.getpid() % 10000}", bare=("rs2",))
    token = work / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, f"secret={secrets.token_hex(32)}\n".encode())
    os.close(fd)
    rs1 = topo.reals[0]
    config = work / "cluster.yaml"
    config.write_text(f"""\
cluster: rjlab
vips: ["{topo.vip}"]
services:
  - name: smtp
    vip: "{topo.vip}"
    port: {PORT}
    scheduler: wlc
    forwarding: tun
    realservers: [{{address: "{rs1.address}", name: rs1}}]
registration:
  listen: "{DIRECTOR_INSIDE}:8730"
  directors: ["http://{DIRECTOR_INSIDE}:8730"]
  token_file: "{token}"
  allowed_networks: [198.51.100.0/24]
  drain_timeout: 90
  members_file: "{work}/members.json"
realserver:
  services: [smtp]
""")
    director = LabDirector(topo, config, work)
    sinks = None
    try:
        topo.create_namespaces()
        director.start()
        topo.wire()
        sinks = SmtpSinks([(rs.role, rs.ns) for rs in topo.reals], ports=(PORT,)).start()
        director.wait_for(lambda t: _dest_weights(t, topo).get(rs1.address) == 1, timeout=600,
                          what="rs1 in the table")
        yield topo, director, sinks, config, work
    finally:
        if sinks is not None:
            sinks.stop()
        director.stop()
        topo.close()


def _dest_weights(table, topo) -> dict[str, int]:
    svc = table.get(f"TCP {topo.vip}:{PORT}")
    return {d.address: d.weight for d in svc.dests} if svc else {}


def _lvsmail_in(topo, node, *args):
    from lvsmail.lab.cluster import lvsmail_argv

    return topo.argv(node, lvsmail_argv(*args))


def _open_session(topo) -> tuple[socket.socket, str]:
    """An SMTP session from the client through the VIP: (socket, real server named in the greeting)."""
    sock = topo.socket(topo.client, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect((topo.vip, PORT))
    greeting = sock.recv(512).decode(errors="replace")
    return sock, greeting[4:].split()[0] if greeting.startswith("220") else "?"


def _noop(sock: socket.socket) -> None:
    """One NOOP on an established session; it must be answered 250 (RFC 5321 4.1.1.9)."""
    sock.sendall(b"NOOP\r\n")
    reply = sock.recv(512)
    assert reply.startswith(b"250"), f"the established session on rs2 was cut (got {reply!r})"


def _where_new_sessions_land(topo, count: int) -> Counter:
    """Open and QUIT ``count`` sessions one after another; count the greeting names."""
    seen: Counter = Counter()
    for _ in range(count):
        sock, server = _open_session(topo)
        try:
            sock.sendall(b"QUIT\r\n")
            sock.recv(512)
        finally:
            sock.close()
        seen[server] += 1
    return seen


def test_tun_join_registers_and_leave_drains_then_deregisters(lab):
    topo, director, sinks, config, work = lab
    rs2 = topo.reals[1]
    root = work / "root"
    for sub in ("etc/sysctl.d", "etc/modules-load.d", "etc/systemd/system"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    state = work / "realserver.json"
    join_args = ("realserver", "join", "-c", str(config), "--address", rs2.address, "--root", str(root),
                 "--state-file", str(state))

    t0 = time.monotonic()
    joined = subprocess.run(_lvsmail_in(topo, rs2, *join_args), capture_output=True, text=True, timeout=600)
    join_seconds = time.monotonic() - t0
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "ip addr add 192.0.2.33/32 dev tunl0" in joined.stdout
    assert "[joins through registration]" in joined.stdout
    assert "ipip" in (root / "etc/modules-load.d/lvsmail-realserver.conf").read_text()

    director.wait_for(lambda t: _dest_weights(t, topo).get(rs2.address) == 1, timeout=DEADLINE,
                      what="rs2 registered in the table")
    landed = _where_new_sessions_land(topo, 6)
    assert landed["rs2"] >= 1 and landed["rs1"] >= 1, landed

    again = subprocess.run(_lvsmail_in(topo, rs2, *join_args, "--dry-run"), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout + again.stderr

    # A session established on rs2 before leave.
    held = None
    others = []
    for _ in range(6):
        sock, server = _open_session(topo)
        if server == "rs2" and held is None:
            held = sock
        else:
            others.append(sock)
    for sock in others:
        sock.close()
    assert held is not None, "no session landed on rs2"

    log = open(work / "leave.log", "w")
    t1 = time.monotonic()
    from lvsmail.lab.cluster import kernel_table, lvsmail_argv

    leaving = topo.popen(rs2, lvsmail_argv("realserver", "leave", "--state-file", str(state), "--root", str(root)),
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        # The held session talks every few seconds (the sink, like any SMTP server, drops idle
        # clients after a minute) and must keep working all through the drain.
        deadline = time.monotonic() + DEADLINE
        while _dest_weights(kernel_table(topo), topo).get(rs2.address) != 0:
            _noop(held)
            assert time.monotonic() < deadline, f"rs2 not drained after {DEADLINE:.0f} s"
            time.sleep(3)
        drained_after = time.monotonic() - t1
        landed = _where_new_sessions_land(topo, 4)
        assert set(landed) == {"rs1"}, landed
        _noop(held)
        assert leaving.poll() is None, "leave did not wait for the established session"
        held.sendall(b"QUIT\r\n")
        held.recv(512)
    finally:
        held.close()
    rc = leaving.wait(timeout=300)
    log.close()
    assert rc == 0, (work / "leave.log").read_text()
    director.wait_for(lambda t: rs2.address not in _dest_weights(t, topo), timeout=DEADLINE,
                      what="rs2 removed from the table")
    left_seconds = time.monotonic() - t1

    from lvsmail.net.realserver import local_context

    def tunl0_addresses():
        ctx = local_context()
        try:
            return ctx.net.addresses("tunl0") if ctx.net.link_exists("tunl0") else []
        finally:
            ctx.net.close()

    assert not any(a.startswith(topo.vip) for a in topo.call(rs2, tunl0_addresses))
    assert not state.exists()
    assert not (root / "etc/systemd/system/lvsmail-realserver.service").exists()
    print(f"join {join_seconds:.1f} s; drain visible after {drained_after:.1f} s; leave done {left_seconds:.1f} s")
