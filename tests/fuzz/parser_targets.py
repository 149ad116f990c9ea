"""One fuzz target per parser of input lvsmail does not control, shared by atheris and hypothesis.

A target takes bytes, feeds them to one parser the way lvsmail's own code does, and
returns normally when the parser returned a result or raised its *documented* error
type (``Target.allowed``). Anything else propagates: that is a crash. Where an encoder
exists a target also checks the round trip (what decodes, encodes and decodes again
to the same value), so a parser that accepts what it cannot represent is caught too.

The first byte of the input often chooses a variant (address family, whether the
checksum is made valid), so that a coverage-guided fuzzer gets past the cheap
refusals instead of spending its time on bad checksums.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lvsmail.config.errors import ConfigError
from lvsmail.config.loader import dump_cluster, parse_cluster
from lvsmail.console import api
from lvsmail.health.checkers import http as http_check
from lvsmail.health.checkers import imap, pop3, smtp
from lvsmail.health.checkers.dialogue import Dialogue
from lvsmail.health.checkers.replies import CheckFailed
from lvsmail.health.credentials import Credentials
from lvsmail.interop.keepalived import import_keepalived
from lvsmail.interop.ldirectord import import_ldirectord
from lvsmail.ipvs import wire
from lvsmail.net import iproute
from lvsmail.net.backend import NetError
from lvsmail.realserver import persist
from lvsmail.registration import http
from lvsmail.registration.protocol import Member, ProtocolError, TokenError, parse_token
from lvsmail.spec import CheckSpec
from lvsmail.vrrp import auth, packet

REPO = Path(__file__).resolve().parents[2]
#: Addresses the VRRP target's pseudo-header uses (documentation ranges, RFC 5737 / RFC 3849).
V4 = ("192.0.2.1", packet.MCAST_V4)
V6 = ("2001:db8::1", packet.MCAST_V6)
#: The key the VRRP target verifies trailers with.
VRRP_KEY = b"fuzzing-key-0123456789"
#: Largest registration body the target reads (the server's max_body default is of this order).
MAX_BODY = 65536


@dataclass(frozen=True)
class Target:
    """A fuzz target: the function, the errors its parser documents, and where its seeds come from."""

    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    about: str


def _guard(target: Target, data: bytes) -> None:
    """Run a target; documented errors are answers, not crashes."""
    try:
        target.run(data)
    except target.allowed:
        pass


# -- VRRP adverts (RFC 5798) -------------------------------------------------------------

def _vrrp(data: bytes) -> None:
    """Decode an advert (IPv4 or IPv6, checksum optionally made valid), verify its trailer, round-trip it."""
    if not data:
        return
    mode, payload = data[0], bytearray(data[1:])
    family = socket.AF_INET6 if mode & 1 else socket.AF_INET
    src, dst = V6 if mode & 1 else V4
    if mode & 2 and len(payload) >= 8:  # make the checksum valid so the decoder reads further
        payload[6:8] = b"\0\0"
        csum = packet.internet_checksum(packet.pseudo_header(family, src, dst, len(payload)) + bytes(payload))
        payload[6:8] = struct.pack("!H", csum)
    if mode & 4:  # a whole IPv4 datagram as the raw socket returns it
        packet.parse_ipv4(bytes(payload))
        return
    adv = packet.decode(bytes(payload), src, dst, family)
    again = packet.decode(packet.encode(adv, src, dst), src, dst, family)
    assert again == adv, (adv, again)
    try:
        auth.Verifier(VRRP_KEY, wall=lambda: 0, window=1e12).verify(src, adv)
    except auth.AuthError:
        pass


def _vrrp_seeds() -> list[bytes]:
    """Plain and signed adverts of both families, as lvsmail sends them."""
    out = []
    for fam, (src, dst), addrs in ((socket.AF_INET, V4, ("192.0.2.33", "192.0.2.34")),
                                   (socket.AF_INET6, V6, ("2001:db8::33",))):
        adv = packet.Advertisement(51, 100, 100, addrs, fam)
        mode = 1 if fam == socket.AF_INET6 else 0
        out.append(bytes([mode]) + packet.encode(adv, src, dst))
        out.append(bytes([mode | 2]) + packet.encode(auth.sign(VRRP_KEY, adv, 7), src, dst))
    body = packet.encode(packet.Advertisement(51, 100, 100, ("192.0.2.33",)), *V4)
    out.append(bytes([4]) + packet.ipv4_header(*V4, len(body)) + body)
    return out


# -- IPVS generic netlink replies (include/uapi/linux/ip_vs.h) --------------------------------

def _ipvs(data: bytes) -> None:
    """Decode every message of a reply datagram with every IPVS decoder; round-trip what decodes."""
    if not data:
        return
    service_af = socket.AF_INET6 if data[0] & 1 else socket.AF_INET
    buf = data[1:]
    dests = wire.DestDecoder()
    for kind, _flags, _seq, payload, end in wire.iter_messages(buf, len(buf)):
        if kind == wire.NLMSG_ERROR:
            wire.error_code(buf, payload, end)
            continue
        wire.family_id(buf, payload, end)
        wire.decode_timeouts(buf, payload, end)
        dests.decode(buf, payload, end, service_af, False)
        svc = wire.decode_service(buf, payload, end, bool(data[0] & 2))
        if svc is not None:
            key, entry = svc
            msg = wire.message(0x22, wire.CMD_NEW_SERVICE, wire.service_attr(key, entry.settings), 1)
            again = wire.decode_service(msg, wire.NLMSG_HDR.size, len(msg), False)
            assert again is not None and again[0] == key and again[1].settings == entry.settings, (svc, again)
        dest = wire.decode_dest(buf, payload, end, service_af, bool(data[0] & 2))
        if dest is not None:
            key, entry = dest
            msg = wire.message(0x22, wire.CMD_NEW_DEST, wire.dest_attr(key, entry.settings), 1)
            again = wire.decode_dest(msg, wire.NLMSG_HDR.size, len(msg), service_af, False)
            assert again is not None and again[0] == key and again[1].settings == entry.settings, (dest, again)
        daemon = wire.decode_daemon(buf, payload, end)
        if daemon is not None and 0 < len(daemon.interface.encode()) < wire.IFNAME_MAXLEN \
                and "\0" not in daemon.interface:
            msg = wire.message(0x22, wire.CMD_NEW_DAEMON, wire.daemon_attr(daemon), 1)
            assert wire.decode_daemon(msg, wire.NLMSG_HDR.size, len(msg)) == daemon, daemon


def _ipvs_seeds() -> list[bytes]:
    """Replies built by the codec's own encoders: services, dests, a daemon, timeouts, an error."""
    from lvsmail.ipvs.model import DestKey, DestSettings, ServiceKey, ServiceSettings, SyncDaemon, Timeouts

    def reply(cmd: int, body: bytes) -> bytes:
        return wire.message(0x22, cmd, body, 9, wire.NLM_F_MULTI)

    tcp = socket.IPPROTO_TCP
    v4 = ServiceKey(socket.AF_INET, tcp, "192.0.2.33", 25)
    v6 = ServiceKey(socket.AF_INET6, tcp, "2001:db8::33", 143)
    svc = reply(wire.CMD_NEW_SERVICE, wire.service_attr(v4, ServiceSettings("wlc", 1, 120, 0xFFFFFF00)))
    svc6 = reply(wire.CMD_NEW_SERVICE, wire.service_attr(v6, ServiceSettings("rr", 0, 0, 64)))
    fwm = reply(wire.CMD_NEW_SERVICE, wire.service_attr(ServiceKey(socket.AF_INET, fwmark=7), ServiceSettings()))
    dest = reply(wire.CMD_NEW_DEST, wire.dest_attr(DestKey("198.51.100.20", 25), DestSettings("tun", 3)))
    dest6 = reply(wire.CMD_NEW_DEST, wire.dest_attr(DestKey("2001:db8::20", 143), DestSettings("dr", 1, af=10)))
    daemon = reply(wire.CMD_NEW_DAEMON, wire.daemon_attr(SyncDaemon("master", "eth0", 5, 1400, "224.0.0.81", 8848, 1)))
    config = reply(wire.CMD_SET_CONFIG, wire.timeouts_body(Timeouts(900, 120, 300)))
    error = wire.NLMSG_HDR.pack(36, wire.NLMSG_ERROR, 0, 9, 0) + struct.pack("=i", -2) + b"\0" * 16
    done = wire.NLMSG_HDR.pack(20, wire.NLMSG_DONE, wire.NLM_F_MULTI, 9, 0) + b"\0" * 4
    return [b"\0" + svc + dest + dest + done, b"\1" + svc6 + dest6, b"\0" + fwm, b"\2" + dest + svc,
            b"\0" + daemon, b"\0" + config, b"\0" + error, b"\0" + wire.family_request(1)]


# -- rtnetlink replies (RFC 3549) ----------------------------------------------------------------

def _rtnetlink(data: bytes) -> None:
    """Split a datagram as a dump and as an ACK, then decode each payload as an address and as a link."""
    seq = struct.unpack_from("=I", data, 8)[0] if len(data) >= 16 else 0
    iproute.parse_ack(data, seq, "fuzz")
    payloads, _done = iproute.parse_dump(data, seq, "fuzz")
    index = struct.unpack_from("=I", payloads[0], 4)[0] if payloads and len(payloads[0]) >= 8 else 0
    for payload in payloads:
        try:
            iproute.decode_address(payload, index, "fuzz")
        except NetError:
            pass
        iproute.decode_link(payload, "fuzz")


def _rtnl_message(kind: int, body: bytes, seq: int = 5) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 2, seq, 0) + body


def _rtnl_attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) & 3)


def _rtnetlink_seeds() -> list[bytes]:
    """An address dump (IPv4 with IFA_LOCAL, IPv6), a link dump, an ACK and a refusal."""
    a4 = _rtnl_message(20, struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 2)
                       + _rtnl_attr(1, socket.inet_aton("192.0.2.10")) + _rtnl_attr(2, socket.inet_aton("192.0.2.10")))
    a6 = _rtnl_message(20, struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 2)
                       + _rtnl_attr(1, socket.inet_pton(socket.AF_INET6, "2001:db8::10")))
    link = _rtnl_message(16, struct.pack("=BBHiII", 0, 0, 1, 2, 0x41, 0) + _rtnl_attr(3, b"eth0\0"))
    done = _rtnl_message(3, struct.pack("=i", 0))
    ack = _rtnl_message(2, struct.pack("=i", 0) + b"\0" * 16)
    refused = _rtnl_message(2, struct.pack("=i", -17) + b"\0" * 16)
    return [a4 + a6 + done, link + link + done, ack, refused]


# -- cluster file, ldirectord.cf, keepalived.conf ------------------------------------------------

def _text(data: bytes) -> str:
    """Bytes as text the way a file reader that refuses nothing would see them."""
    return data.decode("utf-8", "replace")


def _cluster(data: bytes) -> None:
    """Load a cluster file; a spec must survive dump and reload unchanged."""
    spec = parse_cluster(_text(data), "fuzz.yaml")
    assert parse_cluster(dump_cluster(spec), "fuzz.yaml") == spec, spec


def _as_path_if_safe(text: str) -> bool:
    """Whether to pass ``text`` itself too: only a would-be path with a NUL byte, which no file system opens."""
    return "\0" in text and "\n" not in text


def _ldirectord(data: bytes) -> None:
    """Import an ldirectord.cf (text with a newline added, so it is never taken for a path that exists)."""
    text = _text(data)
    if _as_path_if_safe(text):
        try:
            import_ldirectord(text)
        except ConfigError:
            pass
    import_ldirectord(text + "\n")


_EMPTY_DIR = tempfile.mkdtemp(prefix="lvsmail-fuzz-")


def _keepalived(data: bytes) -> None:
    """Import a keepalived.conf; relative includes resolve in an empty directory."""
    here = os.getcwd()
    os.chdir(_EMPTY_DIR)
    text = _text(data)
    try:
        if _as_path_if_safe(text):
            try:
                import_keepalived(text)
            except ConfigError:
                pass
        import_keepalived(text + "\n")
    finally:
        os.chdir(here)


def _files(*patterns: str) -> Callable[[], list[bytes]]:
    def seeds() -> list[bytes]:
        return [p.read_bytes() for pattern in patterns for p in sorted(REPO.glob(pattern))]
    return seeds


# -- registration API (read only here: the modules belong to the HTTP/JSON work) -------------------

def _registration_json(data: bytes) -> None:
    """A registration body as the server reads it: bounded JSON, then the member schema."""
    try:
        from lvsmail.registration import bounded_json
        loads = lambda raw: bounded_json.loads(raw, max_bytes=MAX_BODY)  # noqa: E731
    except ImportError:  # before the bounded reader exists, what the server did: json.loads
        loads = json.loads
    Member.from_json(loads(data))


def _registration_json_seeds() -> list[bytes]:
    member = Member("198.51.100.20", ("smtp", "imap"), 3, (("imap", 1143),), "mx1")
    return [json.dumps(member.to_json()).encode(), b'{"address": "2001:db8::20", "services": [{"name": "smtp"}]}',
            b"[[[[[[[[]]]]]]]]", b'{"address": 1}']


_LOOP = asyncio.new_event_loop()


def _http_head(data: bytes) -> None:
    """A request head read from a stream with the server's 4 KiB buffer limit; then its Content-Length."""
    reader = asyncio.StreamReader(limit=4096, loop=_LOOP)
    reader.feed_data(data)
    reader.feed_eof()
    head = _LOOP.run_until_complete(http.read_head(reader))
    head.length()


def _http_head_seeds() -> list[bytes]:
    return [b"POST /v1/members HTTP/1.1\r\nHost: 192.0.2.1\r\nContent-Length: 57\r\n"
            b"X-Lvsmail-Member: 198.51.100.20\r\n\r\n{}",
            b"GET /v1/members/198.51.100.20 HTTP/1.1\r\nHost: d\r\n\r\n", b"\r\n", b"GET / HTTP/1.1\n:\n\n"]


def _token(data: bytes) -> None:
    parse_token(data, "fuzz.key")


def _token_seeds() -> list[bytes]:
    return [b"secret=" + b"ab" * 32 + b"\n", b"# member key\nmember=198.51.100.20\nkey=" + b"0f" * 32 + b"\n"]


# -- the real server's state file -----------------------------------------------------------

def _state_file(data: bytes) -> None:
    """Read a state file back; what reads must write back (``to_dict``) and read again the same."""
    state = persist.parse_state(_text(data), "fuzz.json")
    text = json.dumps(dict(state, undo=[c.to_dict() for c in state["undo"]]))
    assert persist.parse_state(text, "again.json") == state, state


def _state_file_seeds() -> list[bytes]:
    undo = [{"op": "net", "step": {"op": "sysctl", "key": "net.ipv4.conf.all.arp_ignore", "value": "0"}},
            {"op": "net", "step": {"op": "addr-del", "link": "lo", "cidr": "192.0.2.33/32"}},
            {"op": "file", "path": "/etc/sysctl.d/90-lvsmail-realserver.conf", "content": None, "what": "sysctl"},
            {"op": "postconf", "config_dir": "/etc/postfix", "name": "inet_interfaces", "value": "all"},
            {"op": "dovecot", "path": "/etc/dovecot/conf.d/99-lvsmail.conf", "content": None,
             "main_config": "/etc/dovecot/dovecot.conf", "expect": [["listen", "*"]]},
            {"op": "symlink", "path": "/etc/systemd/system/x.wants/y", "target": None},
            {"op": "deregister", "address": "198.51.100.20"}]
    state = {"version": 1, "cluster": "clustermail", "address": "198.51.100.20", "config": "/etc/lvsmail/cluster.yaml",
             "joined": 1790000000, "interface": "eth0", "undo": undo}
    return [json.dumps(state, indent=1).encode(), b'{"version": 1, "undo": []}', b"[]"]


# -- the checkers: what a real server answers (RFC 5321, RFC 9051, RFC 1939, RFC 9112) ----------

#: The checkers a first byte chooses from (its two low bits), each run as the health engine runs it.
CHECKERS = (("smtp", smtp.check), ("imap", imap.check), ("pop3", pop3.check), ("http", http_check.check))


class ReplayDialogue(Dialogue):
    """A Dialogue whose peer has said everything and closed: the real readers over fixed bytes.

    Only the socket side is replaced (connecting, writing, waiting); ``read_line``,
    ``read_smtp_reply``, ``read_exactly``, ``skip`` and ``read_some`` are the
    checkers' own, with their limits, so the whole dialogue of a check runs on
    whatever the peer sent. What the checker writes is kept in ``sent``.
    """

    def __init__(self, label: str, data: bytes):
        super().__init__(label, "192.0.2.20", 25)
        self.buffer = bytearray(data)
        self.eof = True
        self.sent: list[bytes] = []

    async def connect(self, greeting_first: bool = False) -> None:
        """Already connected."""
        self.connected = True

    async def send(self, data: str | bytes) -> None:
        """Keep what the checker says."""
        self.sent.append(data.encode() if isinstance(data, str) else data)

    async def start_tls(self) -> None:
        """No TLS in a replay: the peer's bytes after STARTTLS are taken as they come."""

    def _consumed(self) -> None:
        """Nothing to resume: the socket side is gone."""

    async def _wait(self) -> None:
        raise AssertionError("a checker waited for more with the peer's end of stream in its buffer")


def run_to_end(coro) -> None:
    """Run a coroutine that cannot wait (a replay answers at once); its result or exception is its own."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("the coroutine waited on something")


def _checker_replies(data: bytes) -> None:
    """A whole check against a peer that sent ``data[1:]``: passes or fails (CheckFailed, ReplyError).

    The first byte chooses the checker (bits 0-1), login credentials (bit 2; bit 6 makes the password
    non-ASCII, an IMAP literal), a ``receive`` string for HTTP (bit 3, bit 4 a regex), HEAD (bit 5)
    and STARTTLS (bit 7, whose handshake the replay skips).
    """
    if not data:
        return
    mode = data[0]
    kind, check = CHECKERS[mode & 3]
    creds = Credentials("lvsmail-check", "pässword" if mode & 64 else "password") if mode & 4 else None
    spec = CheckSpec(kind, receive=("O[K]" if mode & 16 else "OK") if mode & 8 else None,
                     receive_regex=bool(mode & 16), method="HEAD" if mode & 32 else "GET")
    tls = "starttls" if mode & 128 and kind != "http" else "none"
    run_to_end(check(ReplayDialogue(kind, data[1:]), spec, tls, creds))


def _checker_replies_seeds() -> list[bytes]:
    """A passing dialogue of each checker, with and without login, as Postfix, Dovecot and a web server answer."""
    ehlo = b"250-mx1.example.org\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
    smtp_ok = b"220-mx1.example.org ESMTP\r\n220 mx1.example.org ready\r\n" + ehlo
    imap_ok = (b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Dovecot ready.\r\n"
               b"* CAPABILITY IMAP4rev1 STARTTLS LITERAL+ AUTH=PLAIN\r\nL1 OK Capability completed.\r\n")
    imap_login = (b"+ OK\r\nL2 OK Logged in\r\n* 3 EXISTS\r\n* FLAGS (\\Seen)\r\n"
                  b"* OK [UIDVALIDITY 1700000000] x {5}\r\nhello\r\nL3 OK [READ-ONLY] Examine completed\r\n")
    http_ok = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
    return [bytes([0]) + smtp_ok + b"221 2.0.0 Bye\r\n",
            bytes([4 | 128]) + smtp_ok + b"220 2.0.0 go ahead\r\n" + ehlo + b"235 2.7.0 Authentication successful\r\n"
            b"221 2.0.0 Bye\r\n",
            bytes([4]) + smtp_ok.replace(b"AUTH PLAIN LOGIN", b"AUTH LOGIN") + b"334 VXNlcm5hbWU6\r\n"
            b"334 UGFzc3dvcmQ6\r\n235 ok\r\n421 4.3.2 busy\r\n",
            bytes([1]) + imap_ok + b"* BYE Logging out\r\nL2 OK Logout completed.\r\n",
            bytes([1 | 4 | 64]) + imap_ok + imap_login + b"L4 OK Logout completed.\r\n",
            bytes([2 | 4]) + b"+OK Dovecot ready.\r\n+OK\r\n+OK Logged in.\r\n+OK 3 1024\r\n+OK Logging out.\r\n",
            bytes([3 | 8]) + http_ok + b"Content-Length: 2\r\n\r\nOK",
            bytes([3 | 8 | 16]) + http_ok + b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\nOK\r\n0\r\n\r\n",
            bytes([3 | 8]) + http_ok + b"\r\nOK to the end of the connection"]


# -- the director's local API (newline-delimited JSON on a UNIX socket) -------------------------

#: The event buffer's size the local API target checks ``events`` and ``recent`` against.
API_EVENTS = 100


def _local_api(data: bytes) -> None:
    """Request lines as the server reads them (split at newlines, each at most MAX_LINE); what parses
    must be a request that parses back the same from its own JSON."""
    for line in data.split(b"\n")[:64]:
        if not line.strip() or len(line) > api.MAX_LINE:  # blank lines are skipped, long ones refused unread
            continue
        try:
            req = api.parse_request(line, API_EVENTS)
        except api.APIError:  # answered with an error; the connection stays and the next line is read
            continue
        assert api.parse_request(json.dumps(req).encode(), API_EVENTS) == req, req


def _local_api_seeds() -> list[bytes]:
    """Every request the commands and the dashboard send, one per line, and a few refused ones."""
    lines = [{"request": "status", "events": 20, "services": "smtp", "table": True, "mine": False},
             {"request": "drain", "target": "192.0.2.20", "service": "smtp"}, {"request": "enable", "target": "mx2"},
             {"request": "weight", "target": "[2001:db8::20]:25", "weight": 3}, {"request": "recheck", "target": "mx1"},
             {"request": "reload"}, {"request": "events", "recent": 10}]
    good = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return [good, b'{"request": "weight", "target": "mx1", "weight": 65536}\n',
            b'{"request": "status", "events": [[[[]]]]}\n', b'"status"\n{"request": "flush"}\n']


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("vrrp", _vrrp, (packet.PacketError,), _vrrp_seeds,
           "VRRPv3 adverts, IPv4 and IPv6, with and without lvsmail's authentication trailer"),
    Target("ipvs", _ipvs, (wire.WireError,), _ipvs_seeds, "IPVS generic-netlink replies (services, dests, daemon)"),
    Target("rtnetlink", _rtnetlink, (NetError,), _rtnetlink_seeds, "rtnetlink address and link dumps, ACKs"),
    Target("cluster", _cluster, (ConfigError,), _files("directors/examples/*.yaml", "tests/**/*.yaml"),
           "cluster file YAML"),
    Target("ldirectord", _ldirectord, (ConfigError,), _files("directors/examples/*.cf", "tests/**/*.cf"),
           "ldirectord.cf import"),
    Target("keepalived", _keepalived, (ConfigError,), _files("directors/examples/*.conf", "tests/**/keepalived*.conf"),
           "keepalived.conf import"),
    Target("registration_json", _registration_json, (ValueError,), _registration_json_seeds,
           "registration request body (bounded JSON, then the member schema; ProtocolError is a ValueError)"),
    Target("http_head", _http_head, (http.HTTPError,), _http_head_seeds,
           "HTTP/1.1 request head of the registration API"),
    Target("token", _token, (TokenError,), _token_seeds, "registration key file"),
    Target("state_file", _state_file, (persist.StateFileError,), _state_file_seeds, "the real server's state file"),
    Target("checker_replies", _checker_replies, (CheckFailed,), _checker_replies_seeds,
           "a real server's replies to an SMTP, IMAP, POP3 or HTTP check (first byte: which, and its options)"),
    Target("local_api", _local_api, (api.APIError,), _local_api_seeds, "request lines of the director's local API"),
)}

assert issubclass(ProtocolError, ValueError)


def run_guarded(name: str, data: bytes) -> None:
    """Run target ``name`` on ``data``: returns for a result or a documented error, raises for a crash."""
    _guard(TARGETS[name], data)
