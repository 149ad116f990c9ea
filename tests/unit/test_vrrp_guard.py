"""The VRRP receive guard: what reaches the state machine under a flood, and how much of it is logged.

A fake clock drives the token buckets and the summary lines, so the tests count
instead of timing; ``VrrpInstance.received`` is exercised with the guard it owns.
"""

import logging
import socket

import pytest

from lvsmail.vrrp import guard
from lvsmail.vrrp.guard import ReceiveGuard
from lvsmail.vrrp.instance import VrrpInstance
from lvsmail.vrrp.packet import Advertisement
from lvsmail.vrrp.state import VrrpParams

MASTER, HOSTILE = "192.0.2.1", "192.0.2.66"
INTERVAL = 100  # centiseconds: one advert a second from a master


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_master_at_its_own_interval_always_passes():
    clock = Clock()
    g = ReceiveGuard("eth0", clock=clock)
    for _ in range(600):  # ten minutes of adverts
        assert g.admit(MASTER, MASTER, INTERVAL)
        clock.now += 1.0
    assert g.passed == 600 and not g.dropped


def test_a_master_advertising_faster_than_our_interval_is_held_to_its_own_rate():
    """RFC 5798: a backup adopts the master's interval; a master on 0.1 s must pass though ours is 1 s."""
    clock = Clock()
    g = ReceiveGuard("eth0", clock=clock)
    for _ in range(600):
        assert g.admit(MASTER, MASTER, INTERVAL, 10)
        clock.now += 0.1
    assert not g.dropped
    assert sum(g.admit(HOSTILE, MASTER, INTERVAL, 10) for _ in range(600)) == guard.BURST  # not for others


def test_one_source_flooding_gets_its_burst_then_its_rate():
    clock = Clock()
    g = ReceiveGuard("eth0", clock=clock)
    let_through = sum(g.admit(HOSTILE, MASTER, INTERVAL) for _ in range(10_000))  # all at one instant
    assert let_through == guard.BURST and g.dropped["rate"] == 10_000 - guard.BURST
    clock.now += 10.0  # ten seconds later, a second flood
    let_through = sum(g.admit(HOSTILE, MASTER, INTERVAL) for _ in range(10_000))
    assert let_through == guard.BURST  # the bucket refilled to its burst, no further


def test_paced_flood_is_held_to_the_rate():
    clock = Clock()
    g = ReceiveGuard("eth0", clock=clock)
    passed = 0
    for _ in range(100_000):  # 10 seconds at 10 000 adverts a second
        passed += g.admit(HOSTILE, MASTER, INTERVAL)
        clock.now += 0.0001
    rate = guard.RATE_FACTOR * 100 / INTERVAL
    assert passed <= guard.BURST + rate * 10 + 1


def test_many_sources_share_one_bucket_and_the_master_is_not_in_it():
    clock = Clock()
    g = ReceiveGuard("eth0", clock=clock)
    spoofed = [f"192.0.2.{i}" for i in range(100, 200)]
    passed = sum(g.admit(src, MASTER, INTERVAL) for src in spoofed for _ in range(3))
    assert passed == 2 * guard.BURST  # the shared bucket's burst, though each source has tokens left
    assert g.dropped["shared-rate"] == 300 - passed
    assert all(g.admit(MASTER, MASTER, INTERVAL) for _ in range(guard.BURST))  # the master still passes


def test_the_source_table_is_bounded():
    clock = Clock()
    g = ReceiveGuard("eth0", clock=clock)
    for i in range(5 * guard.MAX_SOURCES):
        g.admit(f"2001:db8::{i:x}", MASTER, INTERVAL)
        clock.now += 1.0
    assert len(g._buckets) == guard.MAX_SOURCES


def test_drops_are_summarised_once_per_interval_and_when_flushed(caplog):
    caplog.set_level(logging.WARNING, logger="lvsmail.vrrp")
    clock = Clock()
    g = ReceiveGuard("eth0 IPv4", clock=clock)
    for i in range(120_000):  # just under two minutes of 1000 bad packets a second
        g.drop(("ttl", "vrid", "malformed")[i % 3], HOSTILE)
        clock.now += 0.001
    g.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # the first drop, one a minute later, the flush
    assert lines[0] == ("vrrp eth0 IPv4: dropped 1 packets (ttl 1) from 192.0.2.66 (1); "
                        "0 adverts let through so far, 1 dropped so far")
    assert "120000 dropped so far" in lines[-1]
    assert sum(g.dropped.values()) == 120_000
    g.flush()
    assert len(caplog.records) == 3  # nothing new, nothing logged


class NoTransport:
    def send(self, adv):
        pass


class NoHooks:
    def want_resources(self, held):
        pass

    def notify(self, role, priority):
        pass

    def changed(self, state):
        pass

    def announce(self, reason):
        pass


@pytest.mark.parametrize("vrid,ttl,reason", [(99, 255, "vrid"), (51, 254, "ttl"), (51, 1, "ttl")])
def test_instance_drops_foreign_vrid_and_routed_adverts_before_queueing_them(vrid, ttl, reason):
    inst = VrrpInstance("mail", VrrpParams(51, 100, INTERVAL, MASTER), ("192.0.2.33",), socket.AF_INET,
                        NoTransport(), NoHooks(), clock=Clock())
    for _ in range(1000):
        inst.received(HOSTILE, ttl, Advertisement(vrid, 200, INTERVAL, ("192.0.2.33",)))
    assert inst._events.qsize() == 0 and inst.guard.dropped[reason] == 1000 and inst.last_heard is None


def test_instance_queues_at_most_the_rate_of_a_flooding_source():
    inst = VrrpInstance("mail", VrrpParams(51, 100, INTERVAL, MASTER), ("192.0.2.33",), socket.AF_INET,
                        NoTransport(), NoHooks(), clock=Clock())
    for _ in range(1000):
        inst.received(HOSTILE, 255, Advertisement(51, 1, INTERVAL, ("192.0.2.33",)))
    assert inst._events.qsize() == guard.BURST and inst.guard.dropped["rate"] == 1000 - guard.BURST
