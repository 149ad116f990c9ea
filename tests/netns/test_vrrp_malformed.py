"""A third host sends scapy-crafted adverts to a running director pair: each is dropped or acted on as RFC 5798 says.

The namespaces of the pair test (``vr-*``: a and b run the real Director with failover,
c is the third host). c builds each advert with scapy, not with lvsmail's encoder, and
sends it over a raw socket to the VRRP group:

* RFC 5798 section 7.1: a receiver MUST discard a packet whose TTL / hop limit is not 255,
  whose version is not 3, that is not a whole VRRP packet, whose checksum is wrong, or
  whose VRID is not configured on the interface. Each kind must show up in the director's
  ``adverts_dropped`` counters under its reason (``ttl``, ``malformed``, ``vrid``), and
  change no role.
* Section 6.4.3: a master that receives a valid advert of lower priority discards it and
  stays master. lvsmail (as keepalived's ``garp_lower_prio_repeat``) also announces its
  VIPs again, since the hosts on the link may be sending to the other master. Sent during
  a split brain (the directors' link cut, both master), the advert changes neither.

Throughout, each director keeps running and answers ``status`` on its API socket. Few
packets (a handful of each kind), documentation addresses, traffic only on the test's bridge.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from test_vrrp_flood import raw_sender
from test_vrrp_pair import VIP, VIP6, Node, _isolate, nodes, pair, segment, until  # noqa: F401  (its fixtures)

from support import frames

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

#: Per family: the pair's instance, its VRID and its VIP.
INSTANCE = {"IPv4": ("mail", 51, VIP), "IPv6": ("mail6", 52, VIP6)}
#: Adverts of each malformed kind; each must be counted exactly.
EACH = 3


def api_status(node: Node) -> dict:
    """The director's ``status`` answer over its API socket (the documented newline-delimited JSON protocol)."""
    state = node.dir / "state"
    path = state / "cluster.sock"
    if not path.exists():  # a path too long for AF_UNIX: the director names where it listens instead
        path = state / "cluster.sock.path"
        path = type(path)(path.read_text().strip())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        sock.sendall(json.dumps({"request": "status", "events": 0}).encode() + b"\n")
        with sock.makefile("rb") as reply:
            answer = json.loads(reply.readline())
    assert answer.get("ok"), answer
    return answer["status"]


def instance(node: Node, name: str) -> dict:
    """One VRRP instance of the director's live status (role, transitions, adverts_dropped, ...)."""
    return next(i for i in api_status(node)["failover"]["instances"] if i["name"] == name)


def count(node: Node, name: str, reason: str) -> int:
    """Adverts the instance's receiver dropped for ``reason`` so far."""
    return instance(node, name)["adverts_dropped"].get(reason, 0)


class Third:
    """c's raw sockets to one family's VRRP group; the datagrams come from scapy."""

    def __init__(self, family: str):
        self.socks, self.dst, self.src = raw_sender(family)  # by TTL / hop limit; scapy writes the IPv4 header
        self.v6 = family == "IPv6"
        _name, self.vrid, self.vip = INSTANCE[family]

    def send(self, count: int = 1, *, hops: int = 255, **change) -> None:
        """``count`` adverts built by scapy for our VRID at priority 50, with ``change`` applied."""
        fields = {"vrid": self.vrid, "priority": 50, "adv": 10, "addresses": (self.vip,)} | change
        pkt = frames.advert(self.src, self.dst[0], hops=hops, **fields)
        data = frames.vrrp_message(pkt) if self.v6 else bytes(pkt)
        for _ in range(count):
            self.socks[hops].sendto(data, self.dst)

    def close(self) -> None:
        for sock in set(self.socks.values()):
            sock.close()


#: What c sends, and the reason each director must count it under (RFC 5798 section 7.1).
MALFORMED = [
    ("TTL 254", {"hops": 254}, "ttl"),
    ("bad checksum", {"chksum": 0x1234}, "malformed"),
    ("version 2", {"version": 2}, "malformed"),
    ("truncated to 8 bytes", {"truncate": 8}, "malformed"),
    ("unknown VRID 99", {"vrid": 99}, "vrid"),
]


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_malformed_adverts_are_counted_by_reason_and_change_no_role(nodes, family):  # noqa: F811
    name = INSTANCE[family][0]
    a, b = pair(nodes, v6=family == "IPv6")
    until(lambda: a.role(name) == "master" and b.role(name) == "backup", 10, f"{name} elected", (a, b))
    before = {n.name: instance(n, name) for n in (a, b)}
    third = Third(family)
    try:
        for what, change, reason in MALFORMED:
            counted = {n.name: count(n, name, reason) for n in (a, b)}
            third.send(EACH, **change)
            for n in (a, b):
                want = counted[n.name] + EACH
                until(lambda n=n, r=reason, k=want: count(n, name, r) >= k, 5,
                      f"{n.name} counts {what} under {reason}", (a, b))
                assert count(n, name, reason) == want, (n.name, what)
    finally:
        third.close()
    time.sleep(0.5)  # past master_down_interval (0.3 s + skew): a wrongly heard advert would have shown by now
    for n in (a, b):
        after = instance(n, name)
        assert n.proc.poll() is None, f"{n.name} exited"
        assert (after["role"], after["transitions"]) == (before[n.name]["role"], before[n.name]["transitions"])
        dropped = after["adverts_dropped"]
        expected = {r: before[n.name]["adverts_dropped"].get(r, 0) for r in dropped}
        for _what, _change, reason in MALFORMED:
            expected[reason] = expected.get(reason, 0) + EACH
        assert dropped == expected, (n.name, dropped)  # nothing else dropped, nothing counted twice
    assert a.has_vip(INSTANCE[family][2]) and not b.has_vip(INSTANCE[family][2])


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_a_lower_priority_advert_in_split_brain_leaves_the_master_master(nodes, family):  # noqa: F811
    name, _vrid, vip = INSTANCE[family]
    a, b = pair(nodes, v6=family == "IPv6")
    _isolate(True)  # a and b no longer hear each other: both become master (both still reach c)
    until(lambda: a.role(name) == "master" and b.role(name) == "master", 5, "both masters while split", (a, b))
    before = {n.name: instance(n, name) for n in (a, b)}
    third = Third(family)
    heard = f"failover: {name}: another master, {third.src}, advertised priority 50"
    sent = 0
    try:
        # One advert a second (well inside the receive guard's rate) until a says it heard one: lvsmail
        # re-announces on the first such advert, or ANNOUNCE_HOLDOFF (5 s) after its last announcement.
        deadline = time.monotonic() + 8.0
        while heard not in a.logtext():
            assert time.monotonic() < deadline, f"a never acted on the lower-priority advert\n{a.logtext()[-2000:]}"
            third.send()
            sent += 1
            next_send = time.monotonic() + 1.0
            while heard not in a.logtext() and time.monotonic() < next_send:
                time.sleep(0.05)
    finally:
        third.close()
    time.sleep(0.5)
    for n in (a, b):
        after = instance(n, name)
        assert n.proc.poll() is None, f"{n.name} exited"
        assert after["role"] == "master" and after["transitions"] == before[n.name]["transitions"], (n.name, after)
        assert after["adverts_dropped"] == before[n.name]["adverts_dropped"], "a valid advert must not be dropped"
        assert n.has_vip(vip)
    assert 1 <= sent <= 9
