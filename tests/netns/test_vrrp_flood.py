"""A hostile host on the VRRP link floods adverts: the pair keeps its roles, the directors' work and logs stay bounded.

The same namespaces as the pair test (``vr-*``: a and b are directors on one bridge, c
the hostile host). c sends, paced, thousands of adverts of four kinds, each to be
dropped by a different check (RFC 5798 section 7.1, then lvsmail's rate limit): TTL
254, a foreign VRID, a wrong checksum, and valid VRID-51 adverts of priority 1. The
assertions are on counts, never on timing: no transition on either director, the
drops counted by reason in the receivers' summary lines, few adverts let through,
and a handful of log lines for tens of thousands of packets.
"""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
from test_vrrp_pair import ADDR, NS, Node, ip, nodes, pair, segment, until  # noqa: F401  (the pair test's fixtures)

from lvsmail.net import netns
from lvsmail.vrrp import guard, packet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

HOSTILE = ADDR["c"]
#: Packets of each kind; they go out interleaved, BATCH of each kind then a pause of PACE seconds.
EACH = 5000
BATCH, PACE = 20, 0.01
#: Per family: the instance the pair runs it in and its VRID.
INSTANCE = {"IPv4": ("mail", 51), "IPv6": ("mail6", 52)}


def raw_sender(family: str) -> tuple[dict[int, socket.socket], tuple, str]:
    """c's raw sockets to one family's VRRP group by TTL / hop limit, the group's address, c's source address."""
    if family == "IPv4":
        sock = netns.socket_in_netns(NS["c"], socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")  # c's only link, no route needed
        return {255: sock, 254: sock}, (packet.MCAST_V4, 0), HOSTILE  # IP_HDRINCL: the TTL is in the header
    # The kernel writes the IPv6 header: one socket per hop limit, bound to c's link-local address.
    src = ip("-6", "-o", "addr", "show", "dev", "eth0", "scope", "link", ns=NS["c"]).split()[3].split("/")[0]
    index = netns.run_in_netns(NS["c"], socket.if_nametoindex, "eth0")
    socks = {}
    for hops in (255, 254):
        sock = netns.socket_in_netns(NS["c"], socket.AF_INET6, socket.SOCK_RAW, packet.IPPROTO_VRRP)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.bind((src, 0, 0, index))
        socks[hops] = sock
    return socks, (packet.MCAST_V6, 0, 0, index), src


class Hostile:
    """c's raw sockets and the four kinds of datagram it floods one family's group with."""

    def __init__(self, family: str):
        vrid = INSTANCE[family][1]
        self.socks, self.dst, src = raw_sender(family)
        vip = "192.0.2.33" if family == "IPv4" else "2001:db8::33"
        fam = socket.AF_INET if family == "IPv4" else socket.AF_INET6
        group = self.dst[0]

        def datagram(vrid: int, corrupt: bool = False, ttl: int = 255) -> bytes:
            body = bytearray(packet.encode(packet.Advertisement(vrid, 1, 10, (vip,), fam), src, group))
            if corrupt:
                body[6] ^= 0xFF  # the checksum
            if family == "IPv4":
                return packet.ipv4_header(src, group, len(body), ttl=ttl) + bytes(body)
            return bytes(body)

        self.kinds = {"ttl": (254, datagram(vrid, ttl=254)), "vrid": (255, datagram(99)),
                      "malformed": (255, datagram(vrid, corrupt=True)), "rate": (255, datagram(vrid))}

    def send_round(self) -> int:
        """One datagram of each kind."""
        for hops, data in self.kinds.values():
            self.socks[hops].sendto(data, self.dst)
        return len(self.kinds)

    def close(self) -> None:
        for sock in set(self.socks.values()):
            sock.close()


def rss_kib(node: Node) -> int:
    """The director's resident set size (``ip netns exec`` execs it, so the child's pid is the director's)."""
    with open(f"/proc/{node.proc.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _summaries(node: Node, family: str) -> list[tuple[int, dict[str, int], int]]:
    """(dropped, by reason, let through so far) of each summary line of one family's socket."""
    out = []
    pattern = rf"vrrp eth0 {family}: dropped (\d+) packets \(([^)]*)\) .*; (\d+) adverts let through so far"
    for m in re.finditer(pattern, node.logtext()):
        reasons = {k: int(v) for k, v in (part.rsplit(" ", 1) for part in m[2].split(", "))}
        out.append((int(m[1]), reasons, int(m[3])))
    return out


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_advert_flood_from_a_hostile_host_changes_no_role_and_stays_bounded(nodes, family):  # noqa: F811
    name = INSTANCE[family][0]
    a, b = pair(nodes, v6=family == "IPv6")
    until(lambda: a.role(name) == "master" and b.role(name) == "backup", 10, f"{name} elected", (a, b))
    time.sleep(1.0)  # settled: a's adverts reach b
    before = {n.name: n.state(name)["transitions"] for n in (a, b)}
    lines_before = {n.name: n.logtext().count("\n") for n in (a, b)}
    rss_before = {n.name: rss_kib(n) for n in (a, b)}
    hostile = Hostile(family)
    sent = 0
    roles_seen = set()
    started = time.monotonic()
    try:
        for _ in range(EACH // BATCH):
            for _ in range(BATCH):
                sent += hostile.send_round()
            roles_seen.add((a.role(name), b.role(name)))
            time.sleep(PACE)
    finally:
        hostile.close()
    flood_seconds = time.monotonic() - started
    time.sleep(1.0)  # well past master_down_interval (0.3 s + skew): a flap would have happened
    roles_seen.add((a.role(name), b.role(name)))
    assert roles_seen == {("master", "backup")}
    assert {n.name: n.state(name)["transitions"] for n in (a, b)} == before, "a role changed during the flood"
    log_lines = {n.name: n.logtext().count("\n") - lines_before[n.name] for n in (a, b)}
    rss_after = {n.name: rss_kib(n) for n in (a, b)}
    print(f"\n{family}: {sent} hostile packets in {flood_seconds:.1f} s; director RSS before -> after (KiB): "
          + ", ".join(f"{k} {rss_before[k]} -> {rss_after[k]} ({rss_after[k] - rss_before[k]:+d})" for k in rss_before))
    # Nothing is kept per packet: a few hundred KiB of allocator noise at most, not the flood's megabytes.
    assert all(rss_after[k] - rss_before[k] < 2048 for k in rss_before), (rss_before, rss_after)
    a.stop()
    b.stop()

    for node in (a, b):
        summaries = _summaries(node, family)
        # One line when the first packet was dropped, one when the socket closed (LOG_EVERY is 60 s).
        assert 1 <= len(summaries) <= 2 + int(flood_seconds // guard.LOG_EVERY), summaries
        print(f"{node.name}: {summaries[-1]}")
        dropped: dict[str, int] = {}
        for _n, reasons, _through in summaries:
            for reason, count in reasons.items():
                dropped[reason] = dropped.get(reason, 0) + count
        # Every kind was dropped by its own check. The kernel drops what does not fit the socket's
        # receive buffer before the director sees it (cheaper still), so not every packet is counted.
        for reason in ("ttl", "vrid", "malformed"):
            assert EACH // 10 <= dropped.get(reason, 0) <= EACH, (node.name, dropped)
        limited = dropped.get("rate", 0) + dropped.get("shared-rate", 0)
        assert EACH // 10 <= limited <= EACH, (node.name, dropped)
        # What reached the state machine: the valid adverts not rate-limited, plus a's own on b.
        through = summaries[-1][2]
        bound = guard.BURST + guard.RATE_FACTOR * 10 * (flood_seconds + 2) + 10 * (flood_seconds + 4)
        assert through <= bound, (node.name, through, bound)
        # Tens of thousands of packets, a handful of log lines (summaries, a's one re-announcement).
        assert log_lines[node.name] <= 10, (node.name, log_lines[node.name], node.logtext()[-2000:])
    assert sent == 4 * EACH
