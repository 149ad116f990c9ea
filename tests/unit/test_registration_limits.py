"""The registration API under hostile input, over real loopback sockets: who is admitted, what is answered.

Members use addresses of 127.0.0.16/28 (all local on Linux), so a test can send from a member's address,
from another address inside ``allowed_networks`` and from one outside it, without root or namespaces.
"""

import asyncio
import json
import logging
import socket
import time

import pytest

from lvsmail.config import parse_cluster
from lvsmail.registration import bounded_json, client, server
from lvsmail.registration.members import MemberStore
from lvsmail.registration.protocol import Member, Token, member_key, sign
from lvsmail.registration.server import RegistrationAPI, Request

SECRET = b"0123456789abcdef0123456789abcdef-test-only"
MEMBER = "127.0.0.21"
NEIGHBOUR = "127.0.0.22"  # inside allowed_networks
OUTSIDER = "127.0.0.99"  # outside allowed_networks

CLUSTER = """\
cluster: test
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    forwarding: tun
    realservers: [198.51.100.20]
registration:
  listen: 127.0.0.1:{port}
  directors: ["127.0.0.1:{port}"]
  token_file: /etc/lvsmail/registration.key
  allowed_networks: [127.0.0.16/28]
  max_body: 65536
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopErrors:
    """Everything given to the loop's exception handler (asyncio's "Unhandled exception in client_connected_cb")."""

    def __init__(self):
        self.calls: list[dict] = []

    def __enter__(self):
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: self.calls.append(context))
        return self

    def __exit__(self, *exc):
        asyncio.get_running_loop().set_exception_handler(None)


def nothing_unhandled(errors: LoopErrors, caplog) -> bool:
    """No exception reached the loop's handler, and no log record carries a traceback or says "Unhandled"."""
    assert errors.calls == [], errors.calls
    bad = [r.getMessage() for r in caplog.records if "Unhandled exception" in r.getMessage() or r.exc_info]
    assert bad == []
    return True


class Served:
    """A RegistrationAPI listening on 127.0.0.1 with an in-memory change log."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.spec = parse_cluster(CLUSTER.format(port=self.port))
        self.store = MemberStore(tmp_path / "test.members.json")
        self.changes: list[set[str]] = []
        self.api = RegistrationAPI(lambda: self.spec, Token(secret=SECRET), self.store, self._changed,
                                   self._connections)

    async def _changed(self, services):
        self.changes.append(services)

    async def _connections(self, address):
        return {"smtp": (0, 0)}

    async def __aenter__(self):
        await self.api.start([("127.0.0.1", self.port)])
        return self

    async def __aexit__(self, *exc):
        await self.api.close()

    async def connect(self, source: str):
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))

    async def join(self, member: str = MEMBER, timeout: float = 5.0):
        return await client.register(self.spec.registration, Member(member, ("smtp",)),
                                     token=Token(secret=SECRET), timeout=timeout)


async def read_reply(reader, timeout: float = 5.0) -> tuple[int, dict]:
    """Status and JSON body of the reply; (0, {}) when the server closed without one."""
    async with asyncio.timeout(timeout):
        data = await reader.read()
    if not data:
        return 0, {}
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def signed_request(path: str, body: bytes, member: str = MEMBER, method: str = "POST") -> bytes:
    headers = sign(member_key(SECRET, member), member, method, path, body, time.time())
    lines = [f"{method} {path} HTTP/1.1", "Host: d", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- bodies ------------------------------------------------------------------------------------------


def test_deeply_nested_signed_body_is_answered_400_not_an_exception(tmp_path, caplog):
    """A correctly signed body of nested arrays made json.loads raise RecursionError in the handler, which
    closed the connection with no answer; now it is a 400 with a logged reason, over a real socket."""
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            with LoopErrors() as errors:
                reader, writer = await s.connect(MEMBER)
                writer.write(signed_request("/v1/members", b"[" * 20_000 + b"]" * 20_000))
                status, body = await read_reply(reader)
                writer.close()
                assert status == 400 and "nested 20000 levels deep" in body["error"]
                assert nothing_unhandled(errors, caplog)
            assert not s.changes and not s.store.path.exists()
            assert any("refused 'POST' '/v1/members'" in r.getMessage() and "nested" in r.getMessage()
                       for r in caplog.records)

    asyncio.run(go())


@pytest.mark.parametrize("body, word", [
    (b'{"address": "127.0.0.21", "services": [{"name": "smtp"}], "x": ' + b"[" * 17 + b"]" * 17 + b"}",
     "nested 18 levels deep"),
    (b"\xff\xfe{}", "utf-8"),
    (b'{"address": "127.0.0.21", "services": [], "weight": ' + b"9" * 5000 + b"}", "digits"),
    (b'[1, 2]', "must be a JSON object"),
])
def test_hostile_json_bodies_are_refused_with_a_reason(tmp_path, caplog, body, word):
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            with LoopErrors() as errors:
                reader, writer = await s.connect(MEMBER)
                writer.write(signed_request("/v1/members", body))
                status, reply = await read_reply(reader)
                writer.close()
                assert 400 <= status < 500 and word in reply["error"], reply
                assert nothing_unhandled(errors, caplog)
            assert not s.changes

    asyncio.run(go())


def test_huge_body_is_refused_413_before_it_is_sent(tmp_path, caplog):
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            reader, writer = await s.connect(MEMBER)
            writer.write(b"POST /v1/members HTTP/1.1\r\nHost: d\r\nContent-Length: 1000000000\r\n\r\n")
            status, body = await read_reply(reader)
            writer.close()
            assert status == 413 and "exceeds max_body 65536" in body["error"]

    asyncio.run(go())


@pytest.mark.parametrize("head, word", [
    (b"POST /v1/members HTTP/1.1\r\n Folded: yes\r\n\r\n", "malformed header line"),
    (b"POST /v1/members HTTP/1.1\r\nBad Name: yes\r\n\r\n", "malformed header line"),
    (b"POST /v1/members HTTP/1.1\r\nA: b\rc\r\n\r\n", "control characters"),
    (b"POST /v1/members HTTP/1.1\r\nA: \x00\r\n\r\n", "control characters"),
    (b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * 5000 + b"\r\n\r\n", "line too long"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(40)) + b"\r\n", "more than 32 headers"),
    (b"GET /\r\n\r\n", "malformed request line"),
    (b"\xc3\xa9 / HTTP/1.1\r\n\r\n", "non-ASCII"),
])
def test_malformed_heads_are_answered_400(tmp_path, caplog, head, word):
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            with LoopErrors() as errors:
                reader, writer = await s.connect(MEMBER)
                writer.write(head)
                status, body = await read_reply(reader)
                writer.close()
                assert status == 400 and word in body["error"], body
                assert nothing_unhandled(errors, caplog)

    asyncio.run(go())


def test_a_bug_in_a_handler_is_a_500_with_a_traceback_in_the_log(tmp_path, caplog):
    """Belt and braces: an exception the code did not foresee is answered and logged, not dropped."""
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            async def broken(address):
                raise ZeroDivisionError("a bug")
            s.api.connections = broken
            assert (await s.join())[0].ok
            with LoopErrors() as errors:
                with pytest.raises(client.RegistrationError, match="HTTP 500 internal error: ZeroDivisionError"):
                    await client.lookup(s.spec.registration, MEMBER, token=Token(secret=SECRET))
                assert errors.calls == []
            assert any(r.exc_info and "failed" in r.getMessage() for r in caplog.records)

    asyncio.run(go())


# -- admission ---------------------------------------------------------------------------------------


def test_a_host_outside_allowed_networks_is_refused_before_it_costs_a_slot(tmp_path, caplog, monkeypatch):
    """Many open connections from an outsider take no slot: each is answered 403 at once and closed, and
    a member joins while they are open. The refusal is logged once, with a count of the rest."""
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 4)
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            outsiders = [await s.connect(OUTSIDER) for _ in range(10)]
            for reader, _ in outsiders:
                status, body = await read_reply(reader, timeout=2)
                assert status == 403 and "outside the allowed networks" in body["error"]
            assert len(s.api._slots) == 0
            replies = await s.join()
            assert replies[0].ok
            for _, writer in outsiders:
                writer.close()
        door = [r.getMessage() for r in caplog.records if "refused connection from 127.0.0.99" in r.getMessage()]
        assert len(door) == 1 and "403" in door[0]
        outsiders_again = [await s.connect(OUTSIDER) for _ in range(0)]  # (the server is closed now)
        assert outsiders_again == []

    asyncio.run(go())


def test_one_source_holds_at_most_max_per_source_requests(tmp_path, caplog):
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            held = [await s.connect(NEIGHBOUR) for _ in range(server.MAX_PER_SOURCE)]
            await asyncio.sleep(0.05)
            reader, writer = await s.connect(NEIGHBOUR)
            status, body = await read_reply(reader, timeout=2)
            assert status == 503 and f"{server.MAX_PER_SOURCE} requests from {NEIGHBOUR}" in body["error"]
            assert (await s.join())[0].ok  # another source is not affected
            for _, w in [*held, (reader, writer)]:
                w.close()

    asyncio.run(go())


def test_when_slots_run_short_the_oldest_reader_gives_way_to_a_new_request(tmp_path, caplog, monkeypatch):
    """All slots held by slow readers from several sources: a member's join is served at once, and the
    oldest held connection is answered 503 (it gave way)."""
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 4)
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            with LoopErrors() as errors:
                held = []
                for source in ("127.0.0.23", "127.0.0.24", "127.0.0.25", "127.0.0.26"):
                    reader, writer = await s.connect(source)
                    writer.write(b"POST /v1/mem")  # a request that never completes
                    held.append((reader, writer))
                    await asyncio.sleep(0.02)
                assert len(s.api._slots) == 4
                started = time.monotonic()
                assert (await s.join(timeout=3))[0].ok
                assert time.monotonic() - started < 1.0
                status, body = await read_reply(held[0][0], timeout=2)
                assert status == 503 and "gave way to a newer request" in body["error"]
                for _, w in held:
                    w.close()
                assert nothing_unhandled(errors, caplog)

    asyncio.run(go())


def test_one_deadline_covers_head_and_body(tmp_path, caplog, monkeypatch):
    """A request dripped a byte at a time gets 408 at the deadline, however quickly each byte comes."""
    monkeypatch.setattr(server, "REQUEST_DEADLINE", 0.5)
    caplog.set_level(logging.WARNING)

    async def go():
        async with Served(tmp_path) as s:
            reader, writer = await s.connect(MEMBER)
            data = signed_request("/v1/members", json.dumps(Member(MEMBER, ("smtp",)).to_json()).encode())
            started = time.monotonic()

            async def drip():
                for i in range(len(data)):
                    writer.write(data[i:i + 1])
                    await asyncio.sleep(0.01)

            dripping = asyncio.create_task(drip())
            try:
                status, body = await read_reply(reader, timeout=5)
            except ConnectionResetError:  # closed with our unread drip in its buffer: the RST may beat the reply
                status, body = 408, {"error": "(reset) within 0.5 s"}
            took = time.monotonic() - started
            dripping.cancel()
            await asyncio.gather(dripping, return_exceptions=True)
            writer.close()
            assert status == 408 and "within 0.5 s" in body["error"]
            assert 0.4 < took < 1.5
            assert any("request not received within 0.5 s" in r.getMessage() for r in caplog.records)
            assert not s.changes

    asyncio.run(go())


# -- the client --------------------------------------------------------------------------------------


def test_client_retries_503_with_backoff_and_succeeds(tmp_path):
    """A director busy twice (503) then free: the join succeeds on the third attempt, within the timeout."""
    async def go():
        async with Served(tmp_path) as s:
            real = s.api.handle
            calls = []

            async def busy_twice(request: Request):
                calls.append(time.monotonic())
                if len(calls) <= 2:
                    return 503, {"error": "busy"}
                return await real(request)
            s.api.handle = busy_twice
            replies = await s.join(timeout=5)
            assert replies[0].ok and len(calls) == 3
            assert calls[1] - calls[0] >= 0.09 and calls[2] - calls[1] >= 0.19  # jittered 0.2 s, then 0.4 s

    asyncio.run(go())


def test_client_gives_up_within_its_total_time(tmp_path):
    async def go():
        async with Served(tmp_path) as s:
            async def always_busy(request: Request):
                return 503, {"error": "busy"}
            s.api.handle = always_busy
            started = time.monotonic()
            with pytest.raises(client.RegistrationError, match=r"busy \(after \d+ attempts in 1.5 s\)"):
                await s.join(timeout=1.5)
            assert time.monotonic() - started < 2.0

    asyncio.run(go())


def test_client_retries_a_refused_connection_until_the_director_listens(tmp_path):
    async def go():
        s = Served(tmp_path)
        joining = asyncio.create_task(s.join(timeout=5))
        await asyncio.sleep(0.5)  # the first attempts meet a closed port
        async with s:
            replies = await joining
        assert replies[0].ok and MEMBER in s.store.members

    asyncio.run(go())


def test_client_does_not_retry_a_refusal(tmp_path):
    async def go():
        async with Served(tmp_path) as s:
            calls = []
            real = s.api.handle

            async def counted(request):
                calls.append(request)
                return await real(request)
            s.api.handle = counted
            with pytest.raises(client.RegistrationError, match="HTTP 403"):
                await client.register(s.spec.registration, Member(MEMBER, ("smtp",)), token=Token(secret=SECRET),
                                      bind=False)  # from 127.0.0.1: outside allowed_networks, refused at the door
            with pytest.raises(client.RegistrationError, match="HTTP 401 bad signature"):
                await client.register(s.spec.registration, Member(MEMBER, ("smtp",)),
                                      token=Token(secret=b"another-secret-0123456789abcdef0123"))
            assert len(calls) == 1  # the door refused the first without a request; the second was not retried

    asyncio.run(go())


# -- the bounded JSON reader -------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("{}", 1), ("[[[]]]", 3), ('{"a": "[[[["}', 1), ('["\\"[[["]', 1), ('"\\\\"[[', 2), ("1", 0),
    ("]]]][[", 2),
])
def test_depth_counts_brackets_outside_strings(text, expected):
    assert bounded_json.depth(text) == expected


def test_bounded_loads_refuses_before_parsing():
    with pytest.raises(bounded_json.JSONLimitError, match="exceeds 10"):
        bounded_json.loads(b"[" + b"1," * 10 + b"1]", max_bytes=10)
    with pytest.raises(bounded_json.JSONLimitError, match="nested 200000 levels deep"):
        bounded_json.loads(b"[" * 200_000, max_bytes=1 << 20)
    with pytest.raises(ValueError):  # UTF-16 is not guessed: only UTF-8 is JSON between systems
        bounded_json.loads('["x"]'.encode("utf-16"), max_bytes=100)
    assert bounded_json.loads(b'{"a": [1, {"b": "\\u005b"}]}', max_bytes=100) == {"a": [1, {"b": "["}]}


def test_a_tls_handshake_that_never_finishes_is_cut_at_the_request_deadline(tmp_path, caplog, monkeypatch):
    """TLS starts after admission and inside the request's deadline: a peer that connects and never
    sends its ClientHello holds its slot only until the deadline (asyncio's own default is 60 s)."""
    trustme = pytest.importorskip("trustme")
    monkeypatch.setattr(server, "REQUEST_DEADLINE", 0.5)
    caplog.set_level(logging.WARNING)
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "api.pem"))

    async def go():
        s = Served(tmp_path)
        await s.api.start([("127.0.0.1", s.port)], server.server_context(str(tmp_path / "api.pem"),
                                                                          str(tmp_path / "api.pem")))
        try:
            with LoopErrors() as errors:
                reader, writer = await s.connect(MEMBER)
                started = time.monotonic()
                await asyncio.sleep(0.1)
                assert len(s.api._slots) == 1
                async with asyncio.timeout(5):
                    while await reader.read(4096):
                        pass
                took = time.monotonic() - started
                writer.close()
                assert 0.3 < took < 1.5 and len(s.api._slots) == 0
                assert any("request not received within 0.5 s" in r.getMessage() for r in caplog.records)
                assert nothing_unhandled(errors, caplog)
        finally:
            await s.api.close()

    asyncio.run(go())
