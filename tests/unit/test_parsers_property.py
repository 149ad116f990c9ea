"""Property-based tests of every parser of input lvsmail does not control (issue 18).

The property: on any input a parser returns a result or raises its own documented error
(PacketError, AuthError, WireError, NetError, ConfigError, ProtocolError, HTTPError,
TokenError, StateFileError), never a stray KeyError, struct.error or RecursionError; and
where an encoder exists, what decodes encodes and decodes back to the same value.
The arbitrary-bytes properties run the same targets as the atheris fuzzer
(tests/fuzz/parser_targets.py), so a crash either finds is a crash of both.
Regression tests for crashes the fuzzer found are at the end, named for the crash.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

import parser_targets  # noqa: E402

from lvsmail.config.errors import ConfigError  # noqa: E402
from lvsmail.config.loader import dump_cluster, parse_cluster  # noqa: E402
from lvsmail.console import api  # noqa: E402
from lvsmail.ipvs import wire  # noqa: E402
from lvsmail.ipvs.model import DestKey, DestSettings, ServiceKey, ServiceSettings, SyncDaemon  # noqa: E402
from lvsmail.net import iproute  # noqa: E402
from lvsmail.net.backend import NetError  # noqa: E402
from lvsmail.net.realserver import AddAddress, SetSysctl  # noqa: E402
from lvsmail.realserver import persist  # noqa: E402
from lvsmail.realserver.changes import Deregister, NetChange, PostconfSet, Register, WriteFile  # noqa: E402
from lvsmail.registration.protocol import Member, ProtocolError  # noqa: E402
from lvsmail.vrrp import auth, packet  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXAMPLES = Path(__file__).resolve().parents[2] / "directors" / "examples"


# -- every target on arbitrary bytes and on mutated seeds ----------------------------------------

def _mutated(name: str):
    """A seed of the target with a few bytes overwritten, cut or extended: near-valid input."""
    seeds = parser_targets.TARGETS[name].seeds()
    return st.tuples(st.sampled_from(seeds), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                                                      max_size=6), st.integers(0, 1 << 16)).map(_apply)


def _apply(args) -> bytes:
    seed, edits, cut = args
    data = bytearray(seed)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    return bytes(data[:cut % (len(data) + 2)]) if cut % 3 == 0 else bytes(data)


BINARY = ("vrrp", "ipvs", "rtnetlink", "registration_json", "http_head", "token", "state_file", "local_api")
TEXT = ("cluster", "ldirectord", "keepalived")


@pytest.mark.parametrize("name", BINARY)
@FAST
@given(data=st.binary(max_size=512))
def test_binary_parser_returns_or_raises_its_own_error(name, data):
    parser_targets.run_guarded(name, data)


@pytest.mark.parametrize("name", BINARY + TEXT)
@SLOW
@given(data=st.data())
def test_mutated_seed_returns_or_raises_its_own_error(name, data):
    parser_targets.run_guarded(name, data.draw(_mutated(name)))


@pytest.mark.parametrize("name", TEXT)
@SLOW
@given(text=st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz0123456789 \t\n:=-{}[]#\"'./,")),
                    max_size=300))
def test_config_text_returns_or_raises_config_error(name, text):
    parser_targets.run_guarded(name, text.encode())


# -- VRRP: round trips and tampering ------------------------------------------------------------

def _adverts(family: int):
    ips = (st.ip_addresses(v=4) if family == socket.AF_INET else st.ip_addresses(v=6)).map(str)
    return st.builds(packet.Advertisement, vrid=st.integers(1, 255), priority=st.integers(0, 255),
                     max_adver_int=st.integers(1, packet.MAX_ADVER_INT), addresses=st.lists(ips, max_size=8).map(tuple),
                     family=st.just(family), trailer=st.binary(max_size=64))


@pytest.mark.parametrize("family,ends", [(socket.AF_INET, parser_targets.V4), (socket.AF_INET6, parser_targets.V6)])
@FAST
@given(data=st.data())
def test_vrrp_decode_of_encode_is_identity(family, ends, data):
    adv = data.draw(_adverts(family))
    assert packet.decode(packet.encode(adv, *ends), *ends, family) == adv


@pytest.mark.parametrize("family,ends", [(socket.AF_INET, parser_targets.V4), (socket.AF_INET6, parser_targets.V6)])
@FAST
@given(data=st.data())
def test_vrrp_signed_advert_verifies_and_any_flipped_bit_is_refused(family, ends, data):
    adv = auth.sign(parser_targets.VRRP_KEY, data.draw(_adverts(family)), counter=1000)
    wire_bytes = bytearray(packet.encode(adv, *ends))
    auth.Verifier(parser_targets.VRRP_KEY, wall=lambda: 1000).verify(ends[0], packet.decode(bytes(wire_bytes), *ends,
                                                                                          family))
    bit = data.draw(st.integers(0, len(wire_bytes) * 8 - 1))
    wire_bytes[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((packet.PacketError, auth.AuthError)):
        got = packet.decode(bytes(wire_bytes), *ends, family)
        auth.Verifier(parser_targets.VRRP_KEY, wall=lambda: 1000).verify(ends[0], got)


# -- IPVS generic netlink: round trips -----------------------------------------------------------

_ports = st.integers(0, 65535)
_u32 = st.integers(0, 2**32 - 1)


@st.composite
def _services(draw):
    af = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    if draw(st.booleans()):
        key = ServiceKey(af, fwmark=draw(st.integers(1, 2**32 - 1)))
    else:
        addr = str(draw(st.ip_addresses(v=4 if af == socket.AF_INET else 6)))
        key = ServiceKey(af, draw(st.sampled_from([6, 17, 132])), addr, draw(_ports))
    sched = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=15))
    netmask = draw(_u32 if af == socket.AF_INET else st.integers(0, 128))
    return key, ServiceSettings(sched, draw(_u32) & ~0x2, draw(_u32), netmask)


@FAST
@given(svc=_services(), counters=st.booleans())
def test_ipvs_service_decode_of_encode_is_identity(svc, counters):
    key, settings_ = svc
    msg = wire.message(0x22, wire.CMD_NEW_SERVICE, wire.service_attr(key, settings_), 1)
    got_key, entry = wire.decode_service(msg, wire.NLMSG_HDR.size, len(msg), counters)
    assert (got_key, entry.settings) == (key, settings_)


@FAST
@given(af=st.sampled_from([socket.AF_INET, socket.AF_INET6]),
       service_af=st.sampled_from([socket.AF_INET, socket.AF_INET6]), data=st.data())
def test_ipvs_dest_decode_of_encode_is_identity_in_both_decoders(af, service_af, data):
    key = DestKey(str(data.draw(st.ip_addresses(v=4 if af == socket.AF_INET else 6))), data.draw(_ports))
    settings_ = DestSettings(data.draw(st.sampled_from(["nat", "tun", "dr"])), data.draw(_u32), data.draw(_u32),
                             data.draw(_u32), af if af != service_af else 0)
    msg = wire.message(0x22, wire.CMD_NEW_DEST, wire.dest_attr(key, settings_), 1)
    got = wire.decode_dest(msg, wire.NLMSG_HDR.size, len(msg), service_af, False)
    assert (got[0], got[1].settings) == (key, settings_)


@FAST
@given(state=st.sampled_from(["master", "backup"]), iface=st.from_regex(r"\A[a-z][a-z0-9]{0,14}\Z"),
       syncid=_u32, maxlen=st.integers(0, 65535), group=st.one_of(st.just(""), st.ip_addresses().map(str)),
       port=st.integers(0, 65535), ttl=st.integers(0, 255))
def test_ipvs_daemon_decode_of_encode_is_identity(state, iface, syncid, maxlen, group, port, ttl):
    daemon = SyncDaemon(state, iface, syncid, maxlen, group, port, ttl)
    msg = wire.message(0x22, wire.CMD_NEW_DAEMON, wire.daemon_attr(daemon), 1)
    assert wire.decode_daemon(msg, wire.NLMSG_HDR.size, len(msg)) == daemon


@FAST
@given(svc=_services(), cut=st.integers(0, 200))
def test_ipvs_truncated_service_is_wire_error_or_none(svc, cut):
    msg = wire.message(0x22, wire.CMD_NEW_SERVICE, wire.service_attr(*svc), 1)[:-cut or None]
    try:
        wire.decode_service(msg, wire.NLMSG_HDR.size, len(msg), True)
    except wire.WireError as exc:
        assert exc.errno == 5 and "malformed IPVS netlink reply" in str(exc)


# -- rtnetlink: addresses and links --------------------------------------------------------------

@FAST
@given(ip=st.ip_addresses(), index=st.integers(1, 2**32 - 1), data=st.data())
def test_rtnetlink_address_round_trip(ip, index, data):
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    prefix = data.draw(st.integers(0, ip.max_prefixlen))
    body = struct.pack("=BBBBI", family, prefix, 0, 0, index) + parser_targets._rtnl_attr(1, ip.packed)
    dump = parser_targets._rtnl_message(20, body, 7) + parser_targets._rtnl_message(3, struct.pack("=i", 0), 7)
    payloads, done = iproute.parse_dump(dump, 7, "test")
    assert done and [iproute.decode_address(p, index) for p in payloads] == [f"{ip}/{prefix}"]


@FAST
@given(name=st.from_regex(r"\A[a-z][a-z0-9]{0,14}\Z"), flags=_u32)
def test_rtnetlink_link_round_trip(name, flags):
    body = struct.pack("=BBHiII", 0, 0, 1, 3, flags, 0) + parser_targets._rtnl_attr(3, name.encode() + b"\0")
    assert iproute.decode_link(body) == (name, flags & 0x41 == 0x41)


@FAST
@given(code=st.integers(-2**31, 2**31 - 1))
def test_rtnetlink_any_error_code_is_net_error(code):
    msg = parser_targets._rtnl_message(2, struct.pack("=i", code) + b"\0" * 16, 4)
    try:
        acked = iproute.parse_ack(msg, 4, "test")
    except NetError as exc:
        assert exc.errno != 0
    else:
        assert acked and code == 0


# -- cluster file: structured near-valid documents ---------------------------------------------

_EXAMPLE_DOCS = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 70000), st.floats(allow_nan=False, width=32),
                     st.text(max_size=12), st.just("192.0.2.33"), st.just("2001:db8::1"), st.just([]), st.just({}))


def _paths(doc, prefix=()):
    """Every path to a value inside a document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _replace(doc, path, value):
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], value)
    return copy


@SLOW
@given(data=st.data())
def test_cluster_near_valid_document_loads_or_is_config_error(data):
    doc = data.draw(st.sampled_from(_EXAMPLE_DOCS))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(doc))))
        doc = _replace(doc, path, data.draw(_SCALARS))
    try:
        spec = parse_cluster(yaml.safe_dump(doc), "near.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.file == "near.yaml" for p in exc.problems)
    else:
        assert parse_cluster(dump_cluster(spec), "near.yaml") == spec


def test_every_example_cluster_file_round_trips():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        spec = parse_cluster(path.read_text(), str(path))
        assert parse_cluster(dump_cluster(spec), str(path)) == spec


# -- registration schema (read only: the module belongs to the HTTP/JSON work) -------------------

_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(
                         st.sampled_from(["address", "services", "weight", "name", "port", "x"]), inner, max_size=4)),
                     max_leaves=12)


@FAST
@given(body=_JSON)
def test_member_schema_returns_member_or_protocol_error(body):
    try:
        member = Member.from_json(body)
    except ProtocolError:
        return
    assert Member.from_json(json.loads(json.dumps(member.to_json()))) == member


# -- the director's local API: request lines ------------------------------------------------------

_API_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.text(max_size=8),
                                   st.sampled_from(api.REQUESTS)),
                         lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
                             st.sampled_from(["request", "events", "services", "table", "mine", "target", "service",
                                              "weight", "recent", "x"]), inner, max_size=6)),
                         max_leaves=10)


@FAST
@given(req=_API_JSON)
def test_local_api_request_is_checked_or_refused_with_api_error(req):
    try:
        out = api.check_request(req, parser_targets.API_EVENTS)
    except api.APIError as exc:
        assert str(exc)
        return
    assert out["request"] in api.REQUESTS and out["request"] == req["request"]
    for key in ("events", "recent", "weight"):
        assert key not in out or (type(out[key]) is int and out[key] == req.get(key, out[key]))
    assert api.parse_request(json.dumps(out).encode(), parser_targets.API_EVENTS) == out


_TARGETS = st.one_of(st.ip_addresses().map(str), st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z"),
                     st.tuples(st.ip_addresses(v=6), st.integers(1, 65535)).map(lambda t: f"[{t[0]}]:{t[1]}"))


@FAST
@given(what=st.sampled_from(["drain", "enable", "recheck", "weight"]), target=_TARGETS,
       service=st.one_of(st.none(), st.sampled_from(["smtp", "imap", "webmail"])), weight=st.integers(0, 65535))
def test_local_api_well_formed_requests_parse_to_their_arguments(what, target, service, weight):
    line = json.dumps({"request": what, "target": target, "service": service, "weight": weight}).encode()
    out = api.parse_request(line + b"\n", parser_targets.API_EVENTS)
    assert (out["request"], out["target"], out["service"]) == (what, target, service)
    assert out.get("weight") == (weight if what == "weight" else None)


@pytest.mark.parametrize("line,reason", [
    (b"\xff\n", "utf-8"),
    (b"[" * 100 + b"]" * 100, "nested 100 levels deep"),
    (b'{"request": "weight", "target": "mx1", "weight": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"request": "status", "events": 101}', "events must be an integer 0..100, got 101"),
    (b'{"request": "events", "recent": true}', "recent must be an integer 0..100, got True"),
    (b'{"request": "drain", "target": "  "}', "target must be a non-empty string"),
    (b'{"request": "' + b"x" * 500 + b'"}', "unknown request 'xxxx"),
    (b"[]", "a request is a JSON object"),
])
def test_local_api_refusals_say_what_is_wrong(line, reason):
    with pytest.raises(api.APIError, match=reason) as caught:
        api.parse_request(line, parser_targets.API_EVENTS)
    assert len(str(caught.value)) < 400  # a long value is not echoed back whole


# -- the real server's state file ---------------------------------------------------------------

_CHANGES = st.one_of(
    st.builds(NetChange, st.one_of(st.builds(SetSysctl, st.text(max_size=20), st.text(max_size=5)),
                                   st.builds(AddAddress, st.text(max_size=15), st.just("192.0.2.33/32")))),
    st.builds(WriteFile, st.text(max_size=20), st.one_of(st.none(), st.text(max_size=20)), st.integers(0, 0o777)),
    st.builds(PostconfSet, st.text(max_size=10), st.text(max_size=10), st.one_of(st.none(), st.text(max_size=10))),
    st.builds(Register, st.just("198.51.100.20"), st.lists(st.text(max_size=5), max_size=3).map(tuple),
              st.integers(0, 65535)),
    st.builds(Deregister, st.just("198.51.100.20")),
)


@FAST
@given(undo=st.lists(_CHANGES, max_size=5))
def test_state_file_round_trip(undo):
    record = {"version": 1, "cluster": "c", "address": "198.51.100.20", "joined": 1, "interface": "eth0",
              "undo": [c.to_dict() for c in undo]}
    assert persist.parse_state(json.dumps(record))["undo"] == undo


@pytest.mark.parametrize("text,reason", [
    ("[]", "must hold a JSON object"),
    ("[" * 100000, "nested too deeply"),
    ('{"version": 1}', "no undo list"),
    ('{"version": true, "undo": []}', "version True"),
    ('{"version": 1, "undo": [{"op": "net", "step": []}]}', "undo[0]: step [] does not fit 'net'"),
    ('{"version": 1, "undo": [{"op": "file", "path": 1, "content": null}]}', "path 1 does not fit"),
    ('{"version": 1, "undo": [{"op": "deregister", "address": "x", "extra": 1}]}', "unknown field 'extra'"),
    ('{"version": 1, "undo": 5}', "undo has the wrong type"),
])
def test_damaged_state_file_is_state_file_error(text, reason):
    with pytest.raises(persist.StateFileError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        persist.parse_state(text, "s.json")


# -- regressions: crashes the fuzzer found (test_fuzz_crash_*) and ones found reading the decoders --

def test_fuzz_crash_failover_instance_with_unknown_key_instead_of_name():
    """cluster target: an instance whose ``name`` key was misspelt ended in a TypeError building the spec."""
    text = (EXAMPLES / "clustermail-pair-a.yaml").read_text()
    broken = text.replace("    - name: webmail", "    - nme: webmail", 1)
    assert broken != text
    with pytest.raises(ConfigError, match=r"missing required key 'name'"):
        parse_cluster(broken, "pair-a.yaml")


def test_netlink_error_code_outside_errno_range_is_refused():
    """rtnetlink and IPVS (found reading the decoders for the targets): an NLMSG_ERROR of -(-2**31) made
    os.strerror raise OverflowError."""
    msg = parser_targets._rtnl_message(2, struct.pack("=i", -2**31) + b"\0" * 16, 4)
    with pytest.raises(NetError, match="not a negated errno"):
        iproute.parse_ack(msg, 4, "addr add")
    with pytest.raises(wire.WireError, match="not a negated errno"):
        wire.error_code(msg, 16, len(msg))


def test_ipvs_attribute_overrunning_its_message_is_refused():
    """ipvs (found reading the decoder): an attribute longer than its message was read past the end."""
    msg = bytearray(wire.message(0x22, wire.CMD_NEW_SERVICE, wire.service_attr(ServiceKey(2, 6, "192.0.2.33", 25),
                                                                                  ServiceSettings()), 1))
    struct.pack_into("=H", msg, 20, 0xFFF0)  # the SERVICE nest's length
    with pytest.raises(wire.WireError, match="runs past its message"):
        wire.decode_service(bytes(msg), 16, len(msg), False)


def test_fuzz_crash_service_with_unknown_key_instead_of_name():
    """cluster target: a second service whose ``name`` key was damaged ended in KeyError('name')
    while checking for duplicate names (the service had been built without a name)."""
    text = (EXAMPLES / "clustermail.yaml").read_text()
    broken = text.replace("  - name: http", "  - n\ufffdme: http", 1)
    assert broken != text
    with pytest.raises(ConfigError, match=r"services\[1\]: missing required key 'name'"):
        parse_cluster(broken, "clustermail.yaml")


def test_registration_section_without_token_file_is_config_error():
    """Same pattern as the crash above, found by reading: the section was built without token_file."""
    text = (EXAMPLES / "clustermail.yaml").read_text() + "\nregistration:\n  max_skew: 60\n"
    with pytest.raises(ConfigError, match=r"registration: missing required key 'token_file'"):
        parse_cluster(text, "clustermail.yaml")


@pytest.mark.parametrize("text", ["[" * 5000, "services: " + "[" * 5000, "cluster: " + "{a: " * 3000])
def test_cluster_file_nested_deeper_than_the_stack_is_a_config_error(text):
    # Found while writing the listeners page: PyYAML composes nesting by recursion (RecursionError).
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_cluster(text, "deep.yaml")


def test_keepalived_conf_with_blocks_nested_deeper_than_the_stack_is_a_config_error():
    from lvsmail.interop.keepalived import import_keepalived

    with pytest.raises(ConfigError, match="nested too deeply"):
        import_keepalived("virtual_server 192.0.2.33 25 {\n" + "x {\n" * 5000 + "}\n" * 5001)


@pytest.mark.parametrize("importer,what", [("ldirectord", "ldirectord.cf"), ("keepalived", "keepalived.conf")])
def test_fuzz_crash_import_argument_with_nul_byte(importer, what):
    """ldirectord (found by the hostile-input review, reproduced by the targets since): an argument with a NUL
    byte and no newline is taken for a file name, and Path raised a bare ValueError('embedded null byte')."""
    data = b"virtual\x00192.0.2.33:25"
    parser_targets.run_guarded(importer, data)  # the target passes such text as a path too: a crash before
    from lvsmail.interop.keepalived import import_keepalived
    from lvsmail.interop.ldirectord import import_ldirectord

    run = import_ldirectord if importer == "ldirectord" else import_keepalived
    with pytest.raises(ConfigError, match=f"cannot read {what}: the file name contains a NUL byte"):
        run(data.decode())


def test_keepalived_include_of_a_name_with_nul_byte_is_a_config_error():
    from lvsmail.interop.keepalived import import_keepalived

    with pytest.raises(ConfigError, match=r"<string>:1: include: .*a file name cannot contain a NUL byte"):
        import_keepalived("include /etc/keepalived/a\0b.conf\n")


def test_cluster_file_name_or_path_with_nul_byte_is_a_config_error():
    from lvsmail.config.loader import load_cluster

    with pytest.raises(ConfigError, match="the file name contains a NUL byte"):
        load_cluster("/etc/lvsmail/a\0b.yaml")


@pytest.mark.parametrize("extra,where", [
    ('maintenance_dir: "/var/lib/\\0x"', "maintenance_dir"),
    ('registration:\n  token_file: "/etc/lvsmail/registration\\0.key"', "registration.token_file"),
    ('alerts:\n  webhook: "https://example.org/\\x00"', "alerts.webhook"),
])
def test_cluster_file_setting_with_nul_byte_is_a_config_error(extra, where):
    """YAML's "\\0" escape makes a NUL byte; a path holding one made the director raise a bare ValueError
    (embedded null byte) when it opened the file, e.g. load_token for registration.token_file."""
    text = (EXAMPLES / "clustermail.yaml").read_text() + "\n" + extra + "\n"
    with pytest.raises(ConfigError, match=rf"{where}: .*contains a NUL byte; no setting can hold one"):
        parse_cluster(text, "clustermail.yaml")
