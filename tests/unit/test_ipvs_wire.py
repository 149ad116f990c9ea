"""Byte-level checks of the IPVS netlink codec against the kernel ABI (include/uapi/linux/ip_vs.h).

Requests are built by hand (the kernel never sends them); replies are the lab kernel's own
bytes, recorded in tests/golden/ipvs (see support.netlink_golden), except for layouts that
kernel does not send.
"""

import socket
import struct

import pytest

from lvsmail.ipvs import wire
from lvsmail.ipvs.model import F_PERSISTENT, DestKey, DestSettings, ServiceKey, ServiceSettings
from support import netlink_golden as golden

TCP = socket.IPPROTO_TCP


def test_attr_is_padded_to_four_bytes():
    a = wire.attr(6, b"wlc\0")
    assert a == struct.pack("=HH", 8, 6) + b"wlc\0"
    b = wire.attr(4, b"\x00\x19")
    assert len(b) == 8 and struct.unpack_from("=HH", b) == (6, 4)


def test_ipv4_address_is_a_16_byte_union_with_the_address_first():
    assert wire.addr_bytes("192.0.2.33") == bytes([192, 0, 2, 33]) + b"\0" * 12


def test_port_is_big_endian_and_netmask_v4_network_order_v6_prefix_length():
    key = ServiceKey(socket.AF_INET, TCP, "192.0.2.33", 25)
    body = wire.service_attr(key, ServiceSettings("wlc", F_PERSISTENT, 120, 0xFFFFFF00))
    top = wire.attrs(body, 0, len(body))
    off, n = top[wire.ATTR_SERVICE]
    a = wire.attrs(body, off, off + n)
    assert body[a[wire.SVC_PORT][0]:a[wire.SVC_PORT][0] + 2] == b"\x00\x19"
    assert body[a[wire.SVC_NETMASK][0]:a[wire.SVC_NETMASK][0] + 4] == bytes([255, 255, 255, 0])
    assert struct.unpack_from("=II", body, a[wire.SVC_FLAGS][0]) == (F_PERSISTENT, 0xFFFFFFFF)
    assert struct.unpack_from("=I", body, a[wire.SVC_TIMEOUT][0]) == (120,)
    assert wire.netmask_bytes(socket.AF_INET6, 64) == struct.pack("=I", 64)


def test_fwmark_service_identity_has_no_address_or_port():
    body = wire.service_identity(ServiceKey(socket.AF_INET, fwmark=7))
    a = wire.attrs(body, 0, len(body))
    assert set(a) == {wire.SVC_AF, wire.SVC_FWMARK}


def test_dest_identity_for_delete_and_full_entry_for_add():
    ident = wire.dest_attr(DestKey("198.51.100.20", 25), None)
    off, n = wire.attrs(ident, 0, len(ident))[wire.ATTR_DEST]
    assert set(wire.attrs(ident, off, off + n)) == {wire.DEST_ADDR, wire.DEST_PORT}
    full = wire.dest_attr(DestKey("198.51.100.20", 25), DestSettings("tun", 3))
    off, n = wire.attrs(full, 0, len(full))[wire.ATTR_DEST]
    a = wire.attrs(full, off, off + n)
    # The kernel requires all of these for a full entry (ip_vs_genl_parse_dest).
    assert {wire.DEST_FWD_METHOD, wire.DEST_WEIGHT, wire.DEST_U_THRESH, wire.DEST_L_THRESH} <= set(a)
    assert struct.unpack_from("=I", full, a[wire.DEST_FWD_METHOD][0]) == (2,)  # IP_VS_CONN_F_TUNNEL
    assert struct.unpack_from("=I", full, a[wire.DEST_WEIGHT][0]) == (3,)


def _with_dest_u32(msg: bytes, kind: int, value: int) -> bytes:
    """A dest reply with one u32 attribute of its DEST nest set to ``value`` (the rest the kernel's bytes)."""
    out = bytearray(msg)
    off, n = wire.attrs(out, 20, len(out))[wire.ATTR_DEST]
    at, _ = wire.attrs(out, off, off + n)[kind]
    struct.pack_into("=I", out, at, value)
    return bytes(out)


@pytest.mark.parametrize("name, addr, settings", [
    ("dest-v4-tun", "198.51.100.20", DestSettings("tun", 1)),
    ("dest-v4-dr", "198.51.100.21", DestSettings("dr", 2)),
    ("dest-v4-masq", "198.51.100.22", DestSettings("nat", 3)),
])
def test_decode_dest_reads_the_kernels_forwarding_method_not_a_default(name, addr, settings):
    msg, _ = golden.load(name)
    # Flag bits above the forwarding mask (IP_VS_CONN_F_FWD_MASK) and connection counts do not disturb it.
    for patched in (msg, _with_dest_u32(msg, wire.DEST_FWD_METHOD, 0x0100 | wire.FWD_CODES[settings.forwarding])):
        patched = _with_dest_u32(_with_dest_u32(patched, wire.DEST_ACTIVE_CONNS, 4), wire.DEST_INACT_CONNS, 2)
        (kind, flags, seq, payload, end), = list(wire.iter_messages(patched, len(patched)))
        key, entry = wire.decode_dest(patched, payload, end, socket.AF_INET, counters=False)
        assert key == DestKey(addr, 25)
        assert entry.settings == settings
        assert (entry.active, entry.inactive) == (4, 2)


def test_decode_service_round_trips_what_we_encode_and_drops_the_hashed_flag():
    key = ServiceKey(socket.AF_INET6, TCP, "2001:db8::33", 993)
    settings = ServiceSettings("sh", F_PERSISTENT, 300, 64)
    body = wire.service_attr(key, ServiceSettings("sh", F_PERSISTENT | 0x2, 300, 64))
    msg = wire.message(0x22, wire.CMD_GET_SERVICE, body, seq=3)
    (_, _, _, payload, end), = list(wire.iter_messages(msg, len(msg)))
    got_key, entry = wire.decode_service(msg, payload, end, counters=False)
    assert got_key == key and entry.settings == settings


def _with_seq(msg: bytes, seq: int) -> bytes:
    """A golden message (recorded with seq 0) carrying sequence number ``seq``."""
    return msg[:8] + struct.pack("=I", seq) + msg[12:]


def test_error_code_is_the_negated_errno():
    msg = _with_seq(golden.load("error-eexist")[0], 5)  # the kernel's EEXIST for a service added twice
    (kind, _, seq, off, _), = list(wire.iter_messages(msg, len(msg)))
    assert (kind, seq, wire.error_code(msg, off)) == (wire.NLMSG_ERROR, 5, 17)


def test_several_messages_in_one_datagram_are_all_seen():
    names = ("service-v4-tcp-wlc-persistent", "service-v6-tcp", "service-fwmark")
    data = b"".join(_with_seq(golden.load(n)[0], s) for s, n in enumerate(names, 1)) + golden.load("done")[0]
    seen = list(wire.iter_messages(data, len(data)))
    assert [(kind == wire.NLMSG_DONE, seq) for kind, _, seq, _, _ in seen] == [(False, 1), (False, 2), (False, 3),
                                                                               (True, 0)]
    keys = [wire.decode_service(data, payload, end, counters=False)[0] for _, _, _, payload, end in seen[:3]]
    assert keys == [ServiceKey(socket.AF_INET, TCP, "192.0.2.33", 25),
                    ServiceKey(socket.AF_INET6, TCP, "2001:db8::33", 25), ServiceKey(socket.AF_INET, fwmark=7)]


def _kernel_dest(addr: str, weight: int, *, with_tun: bool = True, af: int = socket.AF_INET) -> bytes:
    """A dest reply shaped like ip_vs_genl_fill_dest's (6.1): tunnel attrs, counters, stats nests."""
    u32 = lambda k, v: wire.attr(k, struct.pack("=I", v))  # noqa: E731
    tun = [wire.attr(13, b"\0"), wire.attr(14, b"\0\0"), wire.attr(15, b"\0\0")] if with_tun else []
    stats = wire.nest(wire.DEST_STATS64, *(wire.attr(k, struct.pack("=Q", k)) for k in range(1, 11)))
    inner = b"".join([
        wire.attr(wire.DEST_ADDR, wire.addr_bytes(addr)), wire.attr(wire.DEST_PORT, struct.pack("!H", 25)),
        u32(wire.DEST_FWD_METHOD, 2), u32(wire.DEST_WEIGHT, weight), *tun,
        u32(wire.DEST_U_THRESH, 0), u32(wire.DEST_L_THRESH, 0), u32(wire.DEST_ACTIVE_CONNS, weight * 2),
        u32(wire.DEST_INACT_CONNS, 1), u32(wire.DEST_PERSIST_CONNS, 0),
        wire.attr(wire.DEST_ADDR_FAMILY, struct.pack("=H", af)), stats,
    ])
    return wire.message(0x22, wire.CMD_GET_DEST, wire.nest(wire.ATTR_DEST, inner), seq=1, flags=2)


def _both(decoder, msg, af=socket.AF_INET):
    (_, _, _, payload, end), = list(wire.iter_messages(msg, len(msg)))
    return decoder.decode(msg, payload, end, af, False), wire.decode_dest(msg, payload, end, af, False)


def _same(a, b):
    return a[0] == b[0] and a[1].settings == b[1].settings and (a[1].active, a[1].inactive, a[1].persistent) == (
        b[1].active, b[1].inactive, b[1].persistent)


def test_fast_dest_decoder_agrees_with_the_general_parser():
    d = wire.DestDecoder()
    for weight, (name, addr) in enumerate([("dest-v4-tun", "198.51.100.20"), ("dest-v4-dr", "198.51.100.21"),
                                           ("dest-v4-masq", "198.51.100.22")], 1):
        msg = _with_dest_u32(golden.load(name)[0], wire.DEST_ACTIVE_CONNS, 2 * weight)
        fast, slow = _both(d, msg)
        assert _same(fast, slow) and fast[0] == DestKey(addr, 25) and fast[1].active == 2 * weight
        assert fast[1].settings.weight == weight


def test_fast_dest_decoder_falls_back_when_a_message_has_another_layout():
    d = wire.DestDecoder()
    _both(d, _kernel_dest("198.51.100.20", 1))  # learns the 6.1 layout
    # An older kernel without the tunnel attributes: header check fails, general parser answers.
    fast, slow = _both(d, _kernel_dest("198.51.100.32", 7, with_tun=False))
    assert _same(fast, slow) and fast[1].settings.weight == 7


def test_fast_dest_decoder_handles_a_mixed_family_tunnel_dest():
    d = wire.DestDecoder()
    _both(d, golden.load("dest-v4-tun")[0])  # learns the kernel's layout
    fast, slow = _both(d, golden.load("dest-v4-tun-ipv6")[0])  # IPv6 dest, IPv4 service
    assert _same(fast, slow) and fast[0] == DestKey("2001:db8::20", 25)
    assert fast[1].settings == DestSettings("tun", 4, af=socket.AF_INET6)


# -- sync daemon (IPVS_CMD_ATTR_DAEMON nest) -----------------------------------------------

from lvsmail.ipvs.model import SyncDaemon  # noqa: E402


def _daemon_nest(body: bytes) -> dict:
    off, n = wire.attrs(body, 0, len(body))[wire.ATTR_DAEMON]
    return {k: body[o:o + ln] for k, (o, ln) in wire.attrs(body, off, off + n).items()}


def test_daemon_attribute_numbers_are_the_kernel_abi():
    # enum IPVS_DAEMON_ATTR_* in include/uapi/linux/ip_vs.h, and IP_VS_STATE_MASTER/BACKUP.
    assert (wire.DAEMON_STATE, wire.DAEMON_MCAST_IFN, wire.DAEMON_SYNC_ID, wire.DAEMON_SYNC_MAXLEN,
            wire.DAEMON_MCAST_GROUP, wire.DAEMON_MCAST_GROUP6, wire.DAEMON_MCAST_PORT,
            wire.DAEMON_MCAST_TTL) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert wire.DAEMON_STATES == {"master": 1, "backup": 2}
    assert (wire.CMD_NEW_DAEMON, wire.CMD_DEL_DAEMON, wire.CMD_GET_DAEMON, wire.ATTR_DAEMON) == (9, 10, 11, 3)


def test_new_daemon_with_only_the_required_attributes_lets_the_kernel_choose_the_rest():
    a = _daemon_nest(wire.daemon_attr(SyncDaemon("backup", "eth1", syncid=7)))
    assert set(a) == {wire.DAEMON_STATE, wire.DAEMON_MCAST_IFN, wire.DAEMON_SYNC_ID}
    assert struct.unpack("=I", a[wire.DAEMON_STATE]) == (2,)
    assert a[wire.DAEMON_MCAST_IFN] == b"eth1\0"  # NLA_NUL_STRING
    assert struct.unpack("=I", a[wire.DAEMON_SYNC_ID]) == (7,)


def test_new_daemon_types_group_in_network_order_port_host_order_ttl_one_byte():
    a = _daemon_nest(wire.daemon_attr(SyncDaemon("master", "eth0", 1, maxlen=1400, group="239.0.0.81",
                                                 port=8900, ttl=2)))
    assert a[wire.DAEMON_MCAST_GROUP] == bytes([239, 0, 0, 81])  # nla_get_in_addr: network order
    assert a[wire.DAEMON_MCAST_PORT] == struct.pack("=H", 8900)  # nla_get_u16: the kernel applies htons
    assert a[wire.DAEMON_SYNC_MAXLEN] == struct.pack("=H", 1400)
    assert a[wire.DAEMON_MCAST_TTL] == b"\x02"
    six = _daemon_nest(wire.daemon_attr(SyncDaemon("master", "eth0", group="ff02::81")))
    assert wire.DAEMON_MCAST_GROUP not in six and len(six[wire.DAEMON_MCAST_GROUP6]) == 16


def test_interface_name_longer_than_the_kernel_buffer_is_refused_before_sending():
    with pytest.raises(ValueError, match="1 to 15 bytes"):
        wire.daemon_attr(SyncDaemon("master", "a-very-long-ifname"))


def test_del_daemon_names_only_the_state():
    a = _daemon_nest(wire.daemon_state_attr("master"))
    assert a == {wire.DAEMON_STATE: struct.pack("=I", 1)}


def test_get_daemon_reply_decodes_with_the_kernels_defaults():
    # ip_vs_genl_fill_daemon's reply to a master started with only state, interface and sync id (a veth,
    # MTU 1500): u32 state, string ifname, u32 syncid, u16 maxlen, u16 port, u8 ttl, in_addr group.
    msg, _ = golden.load("daemon-master")
    (_, _, _, payload, end), = list(wire.iter_messages(msg, len(msg)))
    d = wire.decode_daemon(msg, payload, end)
    assert d == SyncDaemon("master", "sync0", 7, maxlen=1472, group="224.0.0.81", port=8848, ttl=1)
    assert SyncDaemon("master", "sync0", 7).covers(d)
    assert not SyncDaemon("master", "sync0", 7, port=9000).covers(d)
    assert not SyncDaemon("backup", "sync0", 7).covers(d)
    backup, _ = golden.load("daemon-backup")
    (_, _, _, payload, end), = list(wire.iter_messages(backup, len(backup)))
    assert SyncDaemon("backup", "sync1", 7).covers(wire.decode_daemon(backup, payload, end))


def test_daemon_request_round_trips_through_the_decoder():
    want = SyncDaemon("backup", "bond0.100", 255, maxlen=9000, group="ff02::81", port=8848, ttl=3)
    msg = wire.message(0x22, wire.CMD_NEW_DAEMON, wire.daemon_attr(want), seq=1)
    (_, _, _, payload, end), = list(wire.iter_messages(msg, len(msg)))
    assert wire.decode_daemon(msg, payload, end) == want
