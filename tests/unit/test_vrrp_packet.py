"""VRRPv3 advertisements on the wire (RFC 5798 §5) and lvsmail's authentication trailer."""

import socket
import struct

import pytest

from lvsmail.vrrp import auth
from lvsmail.vrrp.packet import (
    Advertisement,
    PacketError,
    centiseconds,
    decode,
    encode,
    internet_checksum,
    ipv4_header,
    parse_ipv4,
    pseudo_header,
)

SRC, DST = "192.0.2.1", "224.0.0.18"
SRC6, DST6 = "fe80::1", "ff02::12"


def test_ipv4_advert_layout_and_checksum_over_the_pseudo_header():
    adv = Advertisement(vrid=51, priority=150, max_adver_int=100, addresses=("192.0.2.33", "192.0.2.34"))
    msg = encode(adv, SRC, DST)
    assert msg[:6] == bytes([0x31, 51, 150, 2, 0x00, 100])
    assert msg[8:] == socket.inet_aton("192.0.2.33") + socket.inet_aton("192.0.2.34")
    # RFC 5798 §5.2.8: the sum over pseudo-header + message is zero; over the message alone (VRRPv2) it is not.
    assert internet_checksum(pseudo_header(socket.AF_INET, SRC, DST, len(msg)) + msg) == 0
    assert internet_checksum(msg) != 0
    assert decode(msg, SRC, DST) == adv


def test_ipv6_advert_round_trip():
    adv = Advertisement(7, 100, 3, ("2001:db8::33",), socket.AF_INET6)
    msg = encode(adv, SRC6, DST6)
    assert len(msg) == 8 + 16
    assert decode(msg, SRC6, DST6, socket.AF_INET6) == adv


def test_interval_uses_12_bits_of_centiseconds_and_reserved_bits_are_ignored():
    adv = Advertisement(1, 100, 4095, ())
    msg = bytearray(encode(adv, SRC, DST))
    assert struct.unpack_from("!H", msg, 4)[0] == 4095
    msg[4] |= 0xF0  # reserved bits set by a sender: RFC 5798 §5.2.6 says ignore on receipt
    msg[6:8] = b"\0\0"
    msg[6:8] = struct.pack("!H", internet_checksum(pseudo_header(socket.AF_INET, SRC, DST, len(msg)) + bytes(msg)))
    assert decode(bytes(msg), SRC, DST).max_adver_int == 4095
    assert centiseconds(0.03) == 3 and centiseconds(1) == 100
    with pytest.raises(ValueError):
        centiseconds(41)
    with pytest.raises(ValueError):
        centiseconds(0.001)


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: m[:-1] + bytes([m[-1] ^ 1]), "bad checksum"),
    (lambda m: bytes([0x21]) + m[1:], "version 2"),
    (lambda m: bytes([0x32]) + m[1:], "type 2"),
    (lambda m: m[:3] + bytes([5]) + m[4:], "5 addresses announced"),
    (lambda m: m[:5], "shorter than a VRRP header"),
])
def test_bad_packets_are_refused_with_a_reason(mutate, reason):
    msg = encode(Advertisement(1, 100, 100, ("192.0.2.33",)), SRC, DST)
    with pytest.raises(PacketError, match=reason):
        decode(mutate(msg), SRC, DST)


def test_checksum_binds_the_addresses_a_packet_travelled_with():
    msg = encode(Advertisement(1, 100, 100, ()), SRC, DST)
    with pytest.raises(PacketError, match="checksum"):
        decode(msg, "192.0.2.2", DST)


def test_ipv4_datagram_parse_reports_ttl():
    payload = encode(Advertisement(1, 100, 100, ()), SRC, DST)
    src, dst, ttl, got = parse_ipv4(ipv4_header(SRC, DST, len(payload), ttl=254) + payload)
    assert (src, dst, ttl, got) == (SRC, DST, 254, payload)


def test_family_mismatch_is_refused_when_encoding():
    with pytest.raises(ValueError):
        encode(Advertisement(1, 100, 100, ("2001:db8::1",)), SRC, DST)


KEY = b"0123456789abcdef-shared"


def test_signed_advert_verifies_once_and_refuses_replay_and_forgery():
    now = [10**18]
    v = auth.Verifier(KEY, wall=lambda: now[0])
    adv = auth.sign(KEY, Advertisement(1, 100, 100, ("192.0.2.33",)), counter=now[0])
    got = decode(encode(adv, SRC, DST), SRC, DST)
    v.verify(SRC, got)
    with pytest.raises(auth.AuthError, match="replayed"):
        v.verify(SRC, got)
    forged = Advertisement(1, 255, 100, ("192.0.2.33",), trailer=got.trailer)
    with pytest.raises(auth.AuthError, match="tag does not match"):
        v.verify(SRC, forged)
    with pytest.raises(auth.AuthError, match="trailer"):
        v.verify(SRC, Advertisement(1, 100, 100, ()))
    stale = auth.sign(KEY, Advertisement(1, 100, 100, ()), counter=now[0] - 60 * 10**9)
    with pytest.raises(auth.AuthError, match="clock"):
        v.verify("192.0.2.9", stale)
    with pytest.raises(auth.AuthError, match="tag"):
        auth.Verifier(b"another-key-of-16b").verify(SRC, auth.sign(KEY, Advertisement(1, 100, 100, ())))


def test_key_file_must_be_root_only(tmp_path):
    import os
    path = tmp_path / "vrrp.key"
    path.write_text("a-long-enough-shared-secret\n")
    path.chmod(0o644)
    with pytest.raises(auth.AuthError, match="chmod 600"):
        auth.load_key(str(path), owner_uid=os.getuid())
    path.chmod(0o600)
    assert auth.load_key(str(path), owner_uid=os.getuid()) == b"a-long-enough-shared-secret"
    with pytest.raises(auth.AuthError, match="owned by"):
        auth.load_key(str(path), owner_uid=os.getuid() + 1)


def test_gratuitous_arp_and_unsolicited_na_frames():
    from lvsmail.vrrp.announce import garp_frame, unsolicited_na

    mac = bytes.fromhex("02005e000133")
    f = garp_frame(mac, "192.0.2.33")
    assert f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x08\x06"
    arp = f[14:]
    assert struct.unpack("!HHBBH", arp[:8]) == (1, 0x0800, 6, 4, 1)  # Ethernet/IPv4 request (RFC 5227 §3)
    assert arp[8:14] == mac and arp[14:18] == arp[24:28] == socket.inet_aton("192.0.2.33")
    na = unsolicited_na(mac, "2001:db8::33")
    assert na[0] == 136 and struct.unpack("!I", na[4:8])[0] == 0x20000000  # override, not solicited (RFC 4861 §4.4)
    assert na[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::33") and na[24:32] == b"\x02\x01" + mac
