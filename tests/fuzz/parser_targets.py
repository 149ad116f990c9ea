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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lvsmail.config.errors import ConfigError
from lvsmail.config.keepalived import import_keepalived
from lvsmail.config.ldirectord import import_ldirectord
from lvsmail.config.loader import dump_cluster, parse_cluster
from lvsmail.ipvs import wire
from lvsmail.net import iproute
from lvsmail.net.backend import NetError
from lvsmail.realserver import persist
from lvsmail.registration import http
from lvsmail.registration.protocol import Member, ProtocolError, TokenError, parse_token
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
    Target("http_head", _http_head, (http.HTTPError,), _http_head_seeds, "HTTP/1.1 request head of the registration API"),
    Target("token", _token, (TokenError,), _token_seeds, "registration key file"),
    Target("state_file", _state_file, (persist.StateFileError,), _state_file_seeds, "the real server's state file"),
)}

assert issubclass(ProtocolError, ValueError)


def run_guarded(name: str, data: bytes) -> None:
    """Run target ``name`` on ``data``: returns for a result or a documented error, raises for a crash."""
    _guard(TARGETS[name], data)
