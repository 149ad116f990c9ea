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

from test_vrrp_pair import ADDR, NS, Node, nodes, pair, segment  # noqa: F401  (the fixtures of the pair test)

from lvsmail.net import netns
from lvsmail.vrrp import guard, packet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

HOSTILE = ADDR["c"]
#: Packets of each kind; they go out interleaved, BATCH of each kind then a pause of PACE seconds.
EACH = 5000
BATCH, PACE = 20, 0.01
SUMMARY = re.compile(r"vrrp eth0 IPv4: dropped (\d+) packets \(([^)]*)\) .*; (\d+) adverts let through so far")


def _kinds() -> dict[str, bytes]:
    """One IPv4 datagram of each kind, as c sends it to 224.0.0.18."""
    def datagram(vrid: int, ttl: int = 255, corrupt: bool = False) -> bytes:
        adv = packet.Advertisement(vrid, 1, 10, ("192.0.2.33",))
        body = bytearray(packet.encode(adv, HOSTILE, packet.MCAST_V4))
        if corrupt:
            body[6] ^= 0xFF  # the checksum
        return packet.ipv4_header(HOSTILE, packet.MCAST_V4, len(body), ttl=ttl) + bytes(body)

    return {"ttl": datagram(51, ttl=254), "vrid": datagram(99), "malformed": datagram(51, corrupt=True),
            "rate": datagram(51)}


def _hostile_socket() -> socket.socket:
    s = netns.socket_in_netns(NS["c"], socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")  # out of c's only link, no route needed
    return s


def rss_kib(node: Node) -> int:
    """The director's resident set size (``ip netns exec`` execs it, so the child's pid is the director's)."""
    with open(f"/proc/{node.proc.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _summaries(node: Node) -> list[tuple[int, dict[str, int], int]]:
    """(dropped, by reason, let through so far) of each summary line in a director's log."""
    out = []
    for m in SUMMARY.finditer(node.logtext()):
        reasons = {k: int(v) for k, v in (part.rsplit(" ", 1) for part in m[2].split(", "))}
        out.append((int(m[1]), reasons, int(m[3])))
    return out


def test_advert_flood_from_a_hostile_host_changes_no_role_and_stays_bounded(nodes):  # noqa: F811
    a, b = pair(nodes)
    time.sleep(1.0)  # settled: a's adverts reach b
    before = {n.name: n.state()["transitions"] for n in (a, b)}
    lines_before = {n.name: n.logtext().count("\n") for n in (a, b)}
    rss_before = {n.name: rss_kib(n) for n in (a, b)}
    kinds = _kinds()
    sock = _hostile_socket()
    sent = 0
    roles_seen = set()
    started = time.monotonic()
    try:
        for _ in range(EACH // BATCH):
            for _ in range(BATCH):
                for datagram in kinds.values():
                    sock.sendto(datagram, (packet.MCAST_V4, 0))
                    sent += 1
            roles_seen.add((a.role(), b.role()))
            time.sleep(PACE)
    finally:
        sock.close()
    flood_seconds = time.monotonic() - started
    time.sleep(1.0)  # well past master_down_interval (0.3 s + skew): a flap would have happened
    roles_seen.add((a.role(), b.role()))
    assert roles_seen == {("master", "backup")}
    assert {n.name: n.state()["transitions"] for n in (a, b)} == before, "a role changed during the flood"
    log_lines = {n.name: n.logtext().count("\n") - lines_before[n.name] for n in (a, b)}
    rss_after = {n.name: rss_kib(n) for n in (a, b)}
    print(f"\n{sent} hostile packets in {flood_seconds:.1f} s; director RSS before -> after (KiB): "
          + ", ".join(f"{k} {rss_before[k]} -> {rss_after[k]} ({rss_after[k] - rss_before[k]:+d})" for k in rss_before))
    # Nothing is kept per packet: a few hundred KiB of allocator noise at most, not the flood's 1.3 MB.
    assert all(rss_after[k] - rss_before[k] < 2048 for k in rss_before), (rss_before, rss_after)
    a.stop()
    b.stop()

    for node in (a, b):
        summaries = _summaries(node)
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
