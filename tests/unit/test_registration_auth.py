"""The registration API's gate: each way a request can be refused, with nothing changed, and a good one accepted."""

import asyncio
import json
import logging

import pytest

from lvsmail.config import parse_cluster
from lvsmail.registration.members import MemberStore
from lvsmail.registration.protocol import Member, Token, member_key, sign
from lvsmail.registration.server import RegistrationAPI, Request

SECRET = b"0123456789abcdef0123456789abcdef-test-only"
NOW = 1_800_000_000.0
MEMBER = "192.0.2.21"
OTHER = "192.0.2.22"

CLUSTER = """\
cluster: test
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    forwarding: tun
    realservers: [192.0.2.20]
  - name: imap
    vip: 192.0.2.33
    port: 143
    realservers: [192.0.2.20]
registration:
  listen: 198.51.100.1:8730
  token_file: /etc/lvsmail/registration.key
  allowed_networks: [192.0.2.0/24]
  max_skew: 30
  max_body: 512
"""


class Harness:
    """An API over a member file in a temporary directory, with a fixed clock and recorded changes."""

    def __init__(self, tmp_path):
        self.spec = parse_cluster(CLUSTER)
        self.store = MemberStore(tmp_path / "test.members.json")
        self.changes: list[set[str]] = []
        self.api = RegistrationAPI(lambda: self.spec, Token(secret=SECRET), self.store, self._changed,
                                   self._connections, clock=lambda: NOW)

    async def _changed(self, services):
        self.changes.append(services)

    async def _connections(self, address):
        return {"smtp": (3, 1)}

    def request(self, method, path, body=b"", *, member=MEMBER, peer=None, key=None, now=NOW, headers=None):
        """A request signed as ``member`` would sign it, arriving from ``peer`` (default: the member)."""
        signed = sign(key or member_key(SECRET, member), member, method, path, body, now)
        signed.update(headers or {})
        return Request(method, path, signed, body, peer or member)

    def handle(self, request):
        return asyncio.run(self.api.handle(request))

    def file_untouched(self):
        return not self.store.path.exists() and not self.changes


def registration(address=MEMBER, services=("smtp",)) -> bytes:
    return json.dumps(Member(address, services).to_json()).encode()


@pytest.fixture
def h(tmp_path):
    return Harness(tmp_path)


def refused(status, body, word, caplog):
    """The refusal has the expected status, names the reason, and was logged with it."""
    assert word in body["error"]
    assert any(word in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    return status


def test_good_registration_is_accepted_and_persisted(h):
    status, body = h.handle(h.request("POST", "/v1/members", registration(services=("smtp", "imap"))))
    assert status == 200 and body["result"] == "registered"
    assert h.changes == [{"smtp", "imap"}]
    saved = json.loads(h.store.path.read_text())
    assert [m["address"] for m in saved["members"]] == [MEMBER]


def test_wrong_token_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    wrong = member_key(b"another-cluster-secret-of-32-chars!!", MEMBER)
    status, body = h.handle(h.request("POST", "/v1/members", registration(), key=wrong))
    assert refused(status, body, "bad signature", caplog) == 401
    assert h.file_untouched()


def test_missing_signature_headers_are_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    status, body = h.handle(Request("POST", "/v1/members", {}, registration(), MEMBER))
    assert refused(status, body, "missing authentication", caplog) == 401
    assert h.file_untouched()


def test_altered_body_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    req = h.request("POST", "/v1/members", registration(services=("smtp",)))
    tampered = Request(req.method, req.path, req.headers, registration(services=("imap",)), req.peer)
    status, body = h.handle(tampered)
    assert refused(status, body, "bad signature", caplog) == 401
    assert h.file_untouched()


def test_replayed_request_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    req = h.request("POST", "/v1/members", registration())
    assert h.handle(req)[0] == 200
    before = h.store.path.read_bytes()
    status, body = h.handle(req)
    assert refused(status, body, "replayed", caplog) == 401
    assert h.store.path.read_bytes() == before and len(h.changes) == 1


def test_expired_timestamp_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    status, body = h.handle(h.request("POST", "/v1/members", registration(), now=NOW - 31))
    assert refused(status, body, "behind the director's clock", caplog) == 401
    assert h.file_untouched()


def test_future_timestamp_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    status, body = h.handle(h.request("POST", "/v1/members", registration(), now=NOW + 31))
    assert refused(status, body, "ahead of the director's clock", caplog) == 401
    assert h.file_untouched()


def test_foreign_address_outside_allowed_networks_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    foreign = "203.0.113.7"
    status, body = h.handle(h.request("POST", "/v1/members", registration(foreign), member=foreign))
    assert refused(status, body, "outside the allowed networks", caplog) == 403
    assert h.file_untouched()


def test_request_sent_from_another_address_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    status, body = h.handle(h.request("POST", "/v1/members", registration(), peer=OTHER))
    assert refused(status, body, f"sent from {OTHER}", caplog) == 403
    assert h.file_untouched()


def test_registering_another_address_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    status, body = h.handle(h.request("POST", "/v1/members", registration(OTHER)))
    assert refused(status, body, f"may not register {OTHER}", caplog) == 403
    assert h.file_untouched()


def test_unknown_service_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    status, body = h.handle(h.request("POST", "/v1/members", registration(services=("pop3",))))
    assert refused(status, body, "unknown service 'pop3'", caplog) == 422
    assert h.file_untouched()


def test_static_address_cannot_join(h, caplog):
    caplog.set_level(logging.WARNING)
    status, body = h.handle(h.request("POST", "/v1/members", registration("192.0.2.20"), member="192.0.2.20"))
    assert refused(status, body, "static real server", caplog) == 409
    assert h.file_untouched()


def test_port_change_under_tun_is_refused(h, caplog):
    caplog.set_level(logging.WARNING)
    body = json.dumps(Member(MEMBER, ("smtp",), ports=(("smtp", 2525),)).to_json()).encode()
    status, reply = h.handle(h.request("POST", "/v1/members", body))
    assert refused(status, reply, "cannot change ports", caplog) == 422
    assert h.file_untouched()


def test_member_of_the_other_family_is_refused_beside_sync(tmp_path, caplog):
    # tun carries an IPv6 real server in an IPv4 service, but the kernel runs no sync daemon beside
    # one (EINVAL): the loader refuses such a file, and the API such a join, before the kernel does.
    caplog.set_level(logging.WARNING)
    member6 = "2001:db8::21"
    h = Harness(tmp_path)
    h.spec = parse_cluster(CLUSTER.replace("[192.0.2.0/24]", "[192.0.2.0/24, 2001:db8::/64]")
                           + "sync: {interface: eth0}\n")
    status, body = h.handle(h.request("POST", "/v1/members", registration(member6), member=member6))
    assert refused(status, body, "connection sync daemon", caplog) == 422
    assert h.file_untouched()
    # the same member joins when the cluster runs no sync daemon
    h.spec = parse_cluster(CLUSTER.replace("[192.0.2.0/24]", "[192.0.2.0/24, 2001:db8::/64]"))
    status, body = h.handle(h.request("POST", "/v1/members", registration(member6), member=member6))
    assert status == 200 and h.changes == [{"smtp"}]


def test_oversized_body_is_refused_before_it_is_read(h, caplog):
    caplog.set_level(logging.WARNING)

    async def go():
        reader = asyncio.StreamReader()
        # Only the head arrives; a server that tried to read the body would wait for it until its timeout.
        reader.feed_data(b"POST /v1/members HTTP/1.1\r\nHost: d\r\nContent-Length: 100000\r\n\r\n")
        return await asyncio.wait_for(h.api._serve(reader, MEMBER), 1.0)

    status, body = asyncio.run(go())
    assert refused(status, body, "exceeds max_body 512", caplog) == 413
    assert h.file_untouched()


def test_member_cannot_remove_another_member(h, caplog):
    caplog.set_level(logging.WARNING)
    assert h.handle(h.request("POST", "/v1/members", registration(OTHER), member=OTHER))[0] == 200
    before = h.store.path.read_bytes()
    status, body = h.handle(h.request("DELETE", f"/v1/members/{OTHER}"))
    assert refused(status, body, f"may not act on member {OTHER}", caplog) == 403
    assert h.store.path.read_bytes() == before and OTHER in h.store.members


def test_member_cannot_drain_another_member(h, caplog):
    caplog.set_level(logging.WARNING)
    assert h.handle(h.request("POST", "/v1/members", registration(OTHER), member=OTHER))[0] == 200
    status, body = h.handle(h.request("POST", f"/v1/members/{OTHER}/drain"))
    assert refused(status, body, f"may not act on member {OTHER}", caplog) == 403
    assert not h.store.members[OTHER].drained


def test_member_key_file_signs_only_for_its_own_address():
    token = Token(member=MEMBER, key=member_key(SECRET, MEMBER))
    assert token.key_for(MEMBER) == member_key(SECRET, MEMBER)
    with pytest.raises(ValueError, match="not of 192.0.2.22"):
        token.key_for(OTHER)


def test_drain_and_deregister_of_itself_are_accepted(h):
    assert h.handle(h.request("POST", "/v1/members", registration()))[0] == 200
    status, body = h.handle(h.request("POST", f"/v1/members/{MEMBER}/drain"))
    assert status == 200 and body["member"]["drained"] and body["connections"]["active"] == 3
    status, body = h.handle(h.request("DELETE", f"/v1/members/{MEMBER}"))
    assert status == 200 and body["result"] == "deregistered" and MEMBER not in h.store.members


def test_chunked_body_is_refused_unread(h, caplog):
    caplog.set_level(logging.WARNING)

    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(b"POST /v1/members HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n")
        return await asyncio.wait_for(h.api._serve(reader, MEMBER), 1.0)

    status, body = asyncio.run(go())
    assert refused(status, body, "chunked bodies are not accepted", caplog) == 411
    assert h.file_untouched()
