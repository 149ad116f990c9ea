"""scapy judges lvsmail's hand-built VRRP frames, and builds the adverts lvsmail must accept or refuse.

lvsmail encodes VRRPv3 adverts (RFC 5798 §5), gratuitous ARP (RFC 5227 §3) and
unsolicited neighbour advertisements (RFC 4861 §7.2.6) itself; its other tests
compare them with bytes written by the same hand. Here an independent
implementation, scapy's VRRPv3, ARP and ICMPv6 ND layers, dissects them, and
scapy-built adverts go through lvsmail's receive path (parse, decode, the
instance's checks and receive guard), each malformation to its reason.
"""

from __future__ import annotations

import socket

import pytest
from test_vrrp_guard import NoHooks, NoTransport  # a transport and hooks that do nothing

from lvsmail.vrrp import announce, packet
from lvsmail.vrrp.instance import VrrpInstance
from lvsmail.vrrp.packet import Advertisement, PacketError
from lvsmail.vrrp.state import VrrpParams
from support import frames

MAC = bytes.fromhex("020000000a01")  # a locally administered address
V4 = {"src": "192.0.2.1", "dst": packet.MCAST_V4, "vips": ("192.0.2.33", "192.0.2.34"), "family": socket.AF_INET}
V6 = {"src": "fe80::1", "dst": packet.MCAST_V6, "vips": ("2001:db8::33", "2001:db8::34"), "family": socket.AF_INET6}
FAMILIES = pytest.mark.parametrize("fam", [V4, V6], ids=["IPv4", "IPv6"])


@FAMILIES
@pytest.mark.parametrize("vrid,priority,interval", [(51, 200, 100), (1, 255, 1), (255, 0, packet.MAX_ADVER_INT)])
def test_an_encoded_advert_dissects_as_scapys_vrrpv3_with_its_fields_and_checksum(fam, vrid, priority, interval):
    adv = Advertisement(vrid, priority, interval, fam["vips"], fam["family"])
    pkt = frames.dissect_vrrp(packet.encode(adv, fam["src"], fam["dst"]), fam["src"], fam["dst"])
    s = frames.scapy()
    assert s.VRRPv3 in pkt, pkt.summary()
    v = pkt[s.VRRPv3]
    assert (v.version, v.type, v.vrid, v.priority, v.ipcount, v.res, v.adv) == (
        3, 1, vrid, priority, len(fam["vips"]), 0, interval)
    assert [str(a) for a in v.addrlist] == list(fam["vips"])
    assert v.chksum == frames.scapy_checksum(pkt), "lvsmail's checksum differs from scapy's (RFC 5798 §5.2.8)"
    assert not bytes(v.payload), "nothing follows the address list without an authentication key"


@FAMILIES
def test_an_advert_with_lvsmails_trailer_still_carries_scapys_checksum(fam):
    """The authentication trailer is part of the IP payload, so the checksum covers it (see vrrp.auth).

    scapy's VRRPv3 sums only its header and addresses, so the whole payload is summed with scapy's
    pseudo-header checksum instead: 0 means the checksum field is right for every byte sent."""
    adv = Advertisement(51, 100, 100, fam["vips"][:1], fam["family"], trailer=bytes(range(24)))
    pkt = frames.dissect_vrrp(packet.encode(adv, fam["src"], fam["dst"]), fam["src"], fam["dst"])
    v = pkt[frames.scapy().VRRPv3]
    assert bytes(v.payload) == bytes(range(24))
    assert frames.payload_checksum(pkt) == 0
    assert frames.payload_checksum(frames.dissect_vrrp(packet.encode(adv, fam["src"], fam["dst"])[:-1] + b"\x01",
                                                       fam["src"], fam["dst"])) != 0  # the sum does see the trailer


def test_the_gratuitous_arp_dissects_as_a_broadcast_arp_request_for_the_vip():
    """RFC 5798 §6.4.1 asks for a gratuitous ARP *request*; RFC 5227 §3 for sender = target = the address and
    the target hardware address all zeroes (keepalived writes ff:ff:ff:ff:ff:ff there; receivers ignore it)."""
    s = frames.scapy()
    pkt = frames.ether(announce.garp_frame(MAC, "192.0.2.33"))
    assert s.ARP in pkt
    assert pkt[s.Ether].dst == "ff:ff:ff:ff:ff:ff" and pkt[s.Ether].src == MAC.hex(":")
    assert pkt[s.Ether].type == 0x0806
    arp = pkt[s.ARP]
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen, arp.op) == (1, 0x0800, 6, 4, 1)
    assert arp.psrc == arp.pdst == "192.0.2.33"
    assert arp.hwsrc == MAC.hex(":") and arp.hwdst == "00:00:00:00:00:00"
    assert not bytes(arp.payload), "no trailing bytes (the NIC pads the frame to 60)"


def test_the_unsolicited_neighbour_advertisement_dissects_as_scapys_na_with_the_override_flag():
    """RFC 4861 §7.2.6: Solicited 0, Override 1, the target link-layer address option; sent to ff02::1."""
    s = frames.scapy()
    message = announce.unsolicited_na(MAC, "2001:db8::33")
    pkt = frames.icmpv6(message, "fe80::1", announce.ALL_NODES)
    assert s.ICMPv6ND_NA in pkt, pkt.summary()
    na = pkt[s.ICMPv6ND_NA]
    assert (na.type, na.code, na.R, na.S, na.O, na.res) == (136, 0, 0, 0, 1, 0)
    assert na.tgt == "2001:db8::33"
    assert s.ICMPv6NDOptDstLLAddr in pkt
    opt = pkt[s.ICMPv6NDOptDstLLAddr]
    assert (opt.type, opt.len, opt.lladdr) == (2, 1, MAC.hex(":"))
    # Zero on purpose: the kernel computes the checksum of every raw ICMPv6 socket's message
    # (RFC 3542 §3.1), over the source address it picks, which lvsmail does not know in advance.
    assert na.cksum == 0


# -- scapy-built adverts through lvsmail's receive path ---------------------------------

HOSTILE = {socket.AF_INET: "192.0.2.100", socket.AF_INET6: "fe80::100"}
OUR_VRID, OUR_PRIORITY, INTERVAL = 51, 100, 100


def receive(datagram, family: int) -> str:
    """What lvsmail makes of one datagram, in the receiver's order (RFC 5798 §7.1): "passed" or the drop reason.

    For IPv4 the raw socket returns the whole datagram (``parse_ipv4``); for IPv6 the kernel
    hands the payload and the hop limit apart, as ``VrrpSocket.receive`` reads them.
    """
    s = frames.scapy()
    wire = bytes(datagram)
    if family == socket.AF_INET:
        src, dst, ttl, payload = packet.parse_ipv4(wire)
    else:
        head = s.IPv6(wire)
        src, dst, ttl, payload = head.src, head.dst, head.hlim, frames.vrrp_message(head)
    if ttl != 255:
        return "ttl"
    try:
        adv = packet.decode(payload, src, dst, family)
    except PacketError as exc:
        return f"malformed: {exc}"
    inst = VrrpInstance("mail", VrrpParams(OUR_VRID, OUR_PRIORITY, INTERVAL, "192.0.2.1"), ("192.0.2.33",),
                        family, NoTransport(), NoHooks())
    inst.received(src, ttl, adv)
    if inst.guard.passed:
        assert adv.vrid == OUR_VRID and adv.priority == 50 and adv.max_adver_int == INTERVAL
        return "passed"
    (reason,) = inst.guard.dropped
    return reason


def _advert(family: int, **change):
    src = HOSTILE[family]
    dst = packet.MCAST_V4 if family == socket.AF_INET else packet.MCAST_V6
    vips = ("192.0.2.33",) if family == socket.AF_INET else ("2001:db8::33",)
    fields = {"vrid": OUR_VRID, "priority": 50, "adv": INTERVAL, "addresses": vips} | change
    return frames.advert(src, dst, **fields)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["IPv4", "IPv6"])
@pytest.mark.parametrize("change,verdict", [
    ({}, "passed"),
    ({"hops": 254}, "ttl"),  # §7.1: crossed a router
    ({"chksum": 0x1234}, "malformed: bad checksum"),
    ({"version": 2}, "malformed: version 2, expected 3"),
    ({"truncate": 8}, "malformed: 1 addresses announced but only 0 bytes follow"),
    ({"vrid": 99}, "vrid"),  # §7.1: a VRID not configured here
    ({"adv": 0}, "malformed: advert interval 0"),
], ids=["valid", "ttl-254", "bad-checksum", "version-2", "truncated-8", "unknown-vrid", "interval-0"])
def test_a_scapy_built_advert_is_accepted_or_refused_for_its_reason(family, change, verdict):
    assert receive(_advert(family, **change), family) == verdict


def test_scapys_own_checksum_of_a_valid_advert_is_what_lvsmails_decoder_verifies():
    """Both sides of §5.2.8: scapy's checksum passes lvsmail's check, and one bit off does not."""
    pkt = _advert(socket.AF_INET)
    payload = frames.vrrp_message(pkt)
    adv = packet.decode(payload, HOSTILE[socket.AF_INET], packet.MCAST_V4)
    assert adv == Advertisement(OUR_VRID, 50, INTERVAL, ("192.0.2.33",))
    with pytest.raises(PacketError, match="bad checksum"):
        packet.decode(payload, HOSTILE[socket.AF_INET], "224.0.0.19")  # another destination, another pseudo-header
