"""TUN, DR and NAT through the real kernel: wire format, SMTP, WLC and persistence.

Each case runs against a cluster in namespaces (see conftest): a client, a
router, a director running ``lvsmail director start``, and four real servers set
up by lvsmail.net. ``case`` is the forwarding method, with ``dr6`` for direct
routing over IPv6 on the DR cluster.

The wire format is asserted on scapy's dissection of the captured bytes (scapy
only ever under tests/, imported once per lab run by a session fixture), an
independent reading of the frames the lab's own small parser also reads.
"""

from __future__ import annotations

import socket
import struct
import time
from types import SimpleNamespace

import pytest

from lvsmail.lab.capture import IPPROTO_IPIP, IPPROTO_TCP
from lvsmail.lab.cluster import kernel_table
from lvsmail.lab.smtp import HeldConnections, greeting_server, send_messages
from lvsmail.lab.topology import CLIENT, CLIENT6, CLIENT_EXTRA, DIRECTOR_INSIDE

#: Ports of the conftest's lab services (persistent SMTP; WLC weights 1/2/3; WLC, no persistence).
SMTP_PORT, WLC_PORT, SPREAD_PORT = 25, 2525, 587

ALL_CASES = ["tun", "dr", "dr6", "nat"]
IPV4_CASES = ["tun", "dr", "nat"]


def _cluster(clusters, case: str):
    """The running cluster for a case, and the address family the case uses."""
    return clusters(case.rstrip("6")), ("inet6" if case.endswith("6") else "inet")


def _connect_once(cluster, family: str, port: int, source: str, quit_: bool = True) -> tuple[str | None, int]:
    """One TCP connection from the client through the VIP: (server named in the greeting, source port)."""
    topo = cluster.topo
    host = topo.vip6 if family == "inet6" else topo.vip
    af = socket.AF_INET6 if family == "inet6" else socket.AF_INET

    def go():
        with socket.socket(af, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.bind((source, 0))
            s.connect((host, port))
            sport = s.getsockname()[1]
            f = s.makefile("rb")
            line = f.readline().decode(errors="replace")
            if quit_:
                s.sendall(b"QUIT\r\n")
                f.readline()
            return greeting_server(line[4:]), sport

    return topo.call(topo.client, go)


def _real(cluster, role: str):
    """The real server with that role."""
    return next(rs for rs in cluster.topo.reals if rs.role == role)


@pytest.fixture(scope="session")
def scapy():
    """scapy's Ethernet, IPv4, IPv6 and TCP layers, imported once per lab run (seconds under emulation)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    return SimpleNamespace(Ether=Ether, IP=IP, IPv6=IPv6, TCP=TCP)


def _ip(scapy, pkt):
    """The outer IP layer of a dissected frame, IPv4 or IPv6."""
    return pkt[scapy.IPv6] if scapy.IPv6 in pkt else pkt[scapy.IP]


def _pseudo_header_sum(ip, proto: int, length: int) -> int:
    """The folded (not complemented) pseudo-header sum (RFC 793 section 3.1, RFC 8200 section 8.1).

    What a TCP checksum field holds while the kernel leaves the rest to the NIC (CHECKSUM_PARTIAL).
    """
    if ip.version == 4:
        data = socket.inet_aton(ip.src) + socket.inet_aton(ip.dst) + struct.pack("!BBH", 0, proto, length)
    else:
        data = (socket.inet_pton(socket.AF_INET6, ip.src) + socket.inet_pton(socket.AF_INET6, ip.dst)
                + struct.pack("!I3xB", length, proto))
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _checksum_problems(scapy, captured) -> list[str]:
    """Each IP and TCP checksum of a captured frame that differs from the one scapy computes.

    A frame the kernel marked "checksum not ready" (a veth leaves TCP checksums to a NIC
    there is none of) must instead hold the pseudo-header sum the NIC would complete.
    """
    got = scapy.Ether(captured.raw)
    fresh = scapy.Ether(captured.raw)
    layer = fresh
    while layer:  # NoPayload ends the chain and is false
        if "chksum" in layer.fields:
            layer.chksum = None  # scapy computes a field left None when it builds the packet
        layer = layer.payload
    want = scapy.Ether(bytes(fresh))
    problems = []
    while got and want:
        if "chksum" in got.fields:
            expected, what = want.chksum, "checksum"
            if isinstance(got, scapy.TCP) and not captured.csum_ready:
                ip = got.underlayer
                length = ip.plen if ip.version == 6 else ip.len - ip.ihl * 4
                expected, what = _pseudo_header_sum(ip, IPPROTO_TCP, length), "pseudo-header sum (checksum offloaded)"
            if got.chksum != expected:
                problems.append(f"{got.name} {what} {got.chksum:#06x}, expected {expected:#06x}")
        got, want = got.payload, want.payload
    return problems


# -- (a) the wire format at the real server -------------------------------------

@pytest.mark.parametrize("case", ALL_CASES)
def test_wire_format_at_the_real_server(clusters, case, scapy, capsys):
    cluster, family = _cluster(clusters, case)
    topo = cluster.topo
    client = CLIENT6 if family == "inet6" else CLIENT
    vip = topo.vip6 if family == "inet6" else topo.vip
    marks = {role: cap.mark() for role, cap in cluster.captures.items()}
    server, sport = _connect_once(cluster, family, SMTP_PORT, client)
    assert server in {rs.role for rs in topo.reals}, f"no greeting from a real server (got {server!r})"
    rs = _real(cluster, server)
    cap = cluster.captures[server]

    def client_syn(c):
        ip = c.frame.ip
        if ip is None or c.outgoing:
            return False
        pkt = ip.inner if case == "tun" else ip
        return bool(pkt and pkt.tcp and pkt.tcp.syn and pkt.tcp.sport == sport and pkt.tcp.dport == SMTP_PORT)

    seen = cap.wait_for(client_syn, timeout=10, since=marks[server])
    assert seen is not None, f"{server} never saw the client's SYN from port {sport}"
    pkt = scapy.Ether(seen.raw)
    ip = _ip(scapy, pkt)
    if case == "tun":
        # IP-in-IP: outer header from the director to the real server, the client's packet inside.
        assert isinstance(ip, scapy.IP) and ip.proto == IPPROTO_IPIP, pkt.summary()
        assert (ip.src, ip.dst) == (DIRECTOR_INSIDE, rs.address)
        inner = ip.payload
        assert isinstance(inner, scapy.IP) and (inner.src, inner.dst) == (client, vip), pkt.summary()
        assert isinstance(inner.payload, scapy.TCP) and (inner.payload.sport, inner.payload.dport) == (sport, SMTP_PORT)
    elif case in ("dr", "dr6"):
        # Direct routing: only the Ethernet destination changed; the IP packet still goes to the VIP.
        assert pkt.dst == rs.mac.lower()
        assert isinstance(ip, scapy.IPv6 if case == "dr6" else scapy.IP), pkt.summary()
        assert isinstance(ip.payload, scapy.TCP) and ip.payload.dport == SMTP_PORT, pkt.summary()
        assert (ip.src, ip.dst) == (client, vip)
    else:
        # NAT: the destination is rewritten to the real server, the source is the client's.
        assert isinstance(ip, scapy.IP) and ip.proto == IPPROTO_TCP, pkt.summary()
        assert (ip.src, ip.dst) == (client, rs.address)
        assert ip[scapy.TCP].dport == SMTP_PORT
    assert _checksum_problems(scapy, seen) == [], f"{case}: {pkt.summary()}"

    # Replies: only NAT sends them back through the director, which rewrites the source to the VIP;
    # with TUN and DR the real server answers the client directly, from the VIP.
    out = cluster.captures["director-out"]

    def reply_from_vip(c):
        p = c.frame.ip
        return bool(c.outgoing and p and p.tcp and p.src == vip and p.dst == client and p.tcp.dport == sport)

    def reply_from_real(c):
        p = c.frame.ip
        return bool(c.outgoing and p and p.tcp and p.dst == client and p.tcp.dport == sport)

    at_real = cap.wait_for(reply_from_real, timeout=5, since=marks[server])
    assert at_real is not None, f"{server} sent no reply to the client"
    via_director = out.wait_for(reply_from_vip, timeout=5 if case == "nat" else 1, since=marks["director-out"])
    reply = _ip(scapy, scapy.Ether(at_real.raw))
    assert _checksum_problems(scapy, at_real) == [], f"{case} reply: {reply.summary()}"
    if case == "nat":
        assert reply.src == rs.address
        assert via_director is not None, "the NAT reply did not leave the director with the VIP as source"
        rewritten = scapy.Ether(via_director.raw)[scapy.IP]
        assert (rewritten.src, rewritten.dst) == (vip, client) and rewritten[scapy.TCP].dport == sport
        assert _checksum_problems(scapy, via_director) == [], f"NAT reply: {rewritten.summary()}"
    else:
        assert reply.src == vip
        assert via_director is None, f"{case}: a reply crossed the director; real servers answer directly"
    frames = [c for c in (seen, at_real, via_director) if c is not None]
    with capsys.disabled():
        print(f"\n  forwarding {case}: checksums of {len(frames)} frames as scapy recomputes them; TCP "
              f"checksum complete in {sum(c.csum_ready for c in frames)}, left to the NIC (pseudo-header sum) "
              f"in {sum(not c.csum_ready for c in frames)}", end="", flush=True)


# -- (b) an SMTP session through the VIP ----------------------------------------

@pytest.mark.parametrize("case", ALL_CASES)
def test_smtp_session_through_the_vip_is_accepted(clusters, case):
    cluster, family = _cluster(clusters, case)
    topo = cluster.topo
    cluster.sinks.reset()
    host = topo.vip6 if family == "inet6" else topo.vip
    source = CLIENT6 if family == "inet6" else CLIENT
    report = send_messages(topo.client.ns, host, SMTP_PORT, count=3, sources=[source], concurrency=1)
    assert [r.error for r in report.results if not r.ok] == []
    assert report.sent == 3
    got = cluster.sinks.deliveries
    assert len(got) == 3
    # The real server saw the client's own address: no source NAT on the way.
    assert {d.peer for d in got} == {source}
    assert {d.server for d in got} == {r.server for r in report.results}


# -- (c) weighted least-connection ----------------------------------------------

def _status_in_process(cluster) -> dict:
    """``lvsmail director status --json``, the command itself, run in this process in the director namespace."""
    import json

    from click.testing import CliRunner

    from lvsmail.commands.director import status

    result = cluster.topo.call(cluster.topo.director, CliRunner().invoke, status, ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("case", IPV4_CASES)
def test_wlc_spreads_held_connections_by_weight(clusters, case):
    cluster, _ = _cluster(clusters, case)
    topo = cluster.topo
    with HeldConnections(topo.client.ns, topo.vip, WLC_PORT, 60, source=CLIENT):
        time.sleep(0.5)  # let the last ACK reach the director
        status = _status_in_process(cluster)
        kernel = kernel_table(topo)  # the kernel's own view, as a cross-check
    svc = next(s for s in status["services"] if s["key"] == cluster.key(WLC_PORT))
    active = {r["address"]: r["active"] for r in svc["realservers"]}
    weights = {r["address"]: r["weight"] for r in svc["realservers"]}
    expect = {_real(cluster, "rs1").address: 10, _real(cluster, "rs2").address: 20,
              _real(cluster, "rs3").address: 30}
    assert weights == {a: {10: 1, 20: 2, 30: 3}[n] for a, n in expect.items()}
    for addr, n in expect.items():
        assert abs(active[addr] - n) <= 1, f"{addr}: {active[addr]} active, expected {n}±1 (all: {active})"
    assert sum(active.values()) == 60
    proc = kernel[cluster.key(WLC_PORT)]
    assert {d.address: d.active for d in proc.dests} == active


def test_status_command_line_reports_the_same_table_as_the_kernel(clusters):
    """One real ``lvsmail director status --json`` process (slow under emulation, so once)."""
    cluster = clusters("tun")
    status = cluster.director.status(as_json=True)
    kernel = kernel_table(cluster.topo)
    keys = {s["key"] for s in status["services"]}
    assert {cluster.key(s) for s in cluster.services} <= keys
    for svc in status["services"]:
        if svc["key"] in kernel:
            proc = kernel[svc["key"]]
            assert {r["address"]: r["weight"] for r in svc["realservers"]} == \
                {d.address: d.weight for d in proc.dests}
            assert all(r["forwarding"] == "tun" for r in svc["realservers"])


# -- (d) persistence ----------------------------------------------------------------

@pytest.mark.parametrize("case", IPV4_CASES)
def test_persistence_keeps_each_client_on_one_real_server(clusters, case):
    cluster, _ = _cluster(clusters, case)
    sources = [CLIENT, *CLIENT_EXTRA]
    landed: dict[str, set] = {s: set() for s in sources}
    for _ in range(4):
        for src in sources:
            server, _port = _connect_once(cluster, "inet", SMTP_PORT, src)
            landed[src].add(server)
    assert all(len(servers) == 1 for servers in landed.values()), landed
    # Persistence is per client: four clients on an idle WLC service land on several servers.
    assert len(set().union(*landed.values())) > 1, landed
    assert kernel_table(cluster.topo)[cluster.key(SMTP_PORT)].persistent_jiffies  # /proc counts in jiffies
    svc = next(s for s in _status_in_process(cluster)["services"] if s["key"] == cluster.key(SMTP_PORT))
    assert svc["persistent"] == 120


@pytest.mark.parametrize("case", IPV4_CASES)
def test_without_persistence_one_client_is_spread(clusters, case):
    """The control for the test above: same client, same pattern, no persistence."""
    cluster, _ = _cluster(clusters, case)
    servers = [_connect_once(cluster, "inet", SPREAD_PORT, CLIENT)[0] for _ in range(8)]
    assert None not in servers
    assert len(set(servers)) > 1, servers


def test_the_ports_here_are_the_cluster_files(clusters):
    assert clusters("tun").ports == {"smtp": SMTP_PORT, "wlc": WLC_PORT, "spread": SPREAD_PORT}
