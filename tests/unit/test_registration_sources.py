"""Per-source caps of the registration API: an IPv6 host's /64 is one source, IPv4 counts per address.

A host is routinely given a whole IPv6 /64 (SLAAC, temporary addresses), so a cap per
address would let it take all ``MAX_CONNECTIONS`` slots with that many addresses. These
tests drive the API's own admission (``_admit`` then ``_take_slot``, as a connection does)
with addresses no test machine has, so they need neither root nor namespaces.
"""

import time

import pytest
import test_registration_limits as limits  # its cluster file, with other networks

from lvsmail.config import parse_cluster
from lvsmail.registration import server
from lvsmail.registration.members import MemberStore
from lvsmail.registration.protocol import Token
from lvsmail.registration.server import RegistrationAPI, source_of

#: The loopback tests' cluster, with allowed networks of documentation addresses (RFC 3849, RFC 5737).
CLUSTER = limits.CLUSTER.format(port=9999).replace("[127.0.0.16/28]", "[2001:db8:1::/48, 198.51.100.0/24]")


@pytest.fixture
def api(tmp_path):
    spec = parse_cluster(CLUSTER)

    async def nothing(*_):
        return {}

    return RegistrationAPI(lambda: spec, Token(secret=b"s" * 32), MemberStore(tmp_path / "m.json"), nothing, nothing)


def admit(api: RegistrationAPI, peer: str):
    """What a new connection from ``peer`` gets: None and a slot taken, or the refusal."""
    refusal = api._admit(peer)
    if refusal is None:
        api._take_slot(peer)
    return refusal


def test_source_of_counts_ipv6_per_64_and_ipv4_per_address():
    assert source_of("2001:db8:1:2::5") == source_of("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::5") == "2001:db8:1:3::/64"
    assert source_of("198.51.100.20") == "198.51.100.20" != source_of("198.51.100.21")
    assert source_of("?") == "?"


def test_many_addresses_of_one_ipv6_64_share_one_cap(api):
    peers = [f"2001:db8:1:2::{i:x}" for i in range(1, 65)]  # 64 addresses, each would be a source on its own
    refusals = [admit(api, p) for p in peers]
    assert refusals[:server.MAX_PER_SOURCE] == [None] * server.MAX_PER_SOURCE
    assert all(r is not None and r[0] == 503 for r in refusals[server.MAX_PER_SOURCE:])
    assert "2001:db8:1:2::/64 (2001:db8:1:2::5)" in refusals[server.MAX_PER_SOURCE][1]
    assert len(api._slots) == server.MAX_PER_SOURCE < server.MAX_CONNECTIONS


def test_two_ipv6_64s_are_independent_sources(api):
    for i in range(1, server.MAX_PER_SOURCE + 1):
        assert admit(api, f"2001:db8:1:2::{i}") is None
    assert admit(api, "2001:db8:1:2::99")[0] == 503
    for i in range(1, server.MAX_PER_SOURCE + 1):  # the neighbouring /64 in the same /48 is not affected
        assert admit(api, f"2001:db8:1:3::{i}") is None
    assert admit(api, "2001:db8:1:3::99")[0] == 503


def test_ipv4_stays_per_address(api):
    for last in range(20, 28):  # eight addresses of one /24, each its own source
        for _ in range(server.MAX_PER_SOURCE):
            assert admit(api, f"198.51.100.{last}") is None
        assert admit(api, f"198.51.100.{last}")[0] == 503
    assert len(api._slots) == 8 * server.MAX_PER_SOURCE


def test_released_slots_free_the_64s_share(api):
    for i in range(server.MAX_PER_SOURCE):
        assert admit(api, f"2001:db8:1:2::{i + 1}") is None
    assert admit(api, "2001:db8:1:2::77")[0] == 503
    api._release(next(iter(api._slots)))
    assert admit(api, "2001:db8:1:2::77") is None
    for slot in list(api._slots):
        api._release(slot)
    assert api._per_source == {} and api._slots == {}


def test_refusals_from_one_64_are_logged_once_not_once_per_address():
    """The refusal log's key is the source too: 64 addresses of a /64 refused write one line, not 64."""
    quiet = server._RefusalLog()
    now = time.monotonic()
    said = [quiet.admit(p, f"{p} is outside the allowed networks (x)", now)
            for p in (f"2001:db8:9:9::{i:x}" for i in range(1, 65))]
    assert said[0] == "" and said[1:] == [None] * 63
    assert quiet.admit("2001:db8:9:8::1", "2001:db8:9:8::1 is outside the allowed networks (x)", now) == ""
