"""scapy as the independent oracle for the frames lvsmail builds and parses by hand.

lvsmail encodes VRRPv3 adverts, gratuitous ARP and unsolicited neighbour
advertisements itself (the director must start fast, and scapy takes seconds to
import), so its own tests would otherwise have no judge but its own code. Here
scapy dissects what lvsmail built, and builds what lvsmail must parse or refuse.

scapy is imported on first use only: ``import support`` stays cheap for the many
tests that never look at a frame, and a missing scapy fails the tests that need it
with an ImportError naming it (it is in the ``test`` extra and Debian's python3-scapy).
"""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

_layers: SimpleNamespace | None = None


def scapy() -> SimpleNamespace:
    """scapy's layers the oracle uses (Ether, ARP, IP, IPv6, VRRP, VRRPv3, ICMPv6ND_NA, ...), imported once."""
    global _layers
    if _layers is None:
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
        from scapy.layers.l2 import ARP, Ether
        from scapy.layers.vrrp import VRRP, VRRPv3
        from scapy.packet import Raw

        _layers = SimpleNamespace(IP=IP, IPv6=IPv6, ICMPv6ND_NA=ICMPv6ND_NA, ICMPv6NDOptDstLLAddr=ICMPv6NDOptDstLLAddr,
                                  ARP=ARP, Ether=Ether, VRRP=VRRP, VRRPv3=VRRPv3, Raw=Raw)
    return _layers


def _is_v6(address: str) -> bool:
    return ipaddress.ip_address(address).version == 6


def ip_header(src: str, dst: str, hops: int = 255, **fields):
    """scapy's IP(ttl=hops, proto=112) or IPv6(hlim=hops, nh=112) from ``src`` to ``dst``."""
    s = scapy()
    if _is_v6(src):
        return s.IPv6(src=src, dst=dst, hlim=hops, nh=112, **fields)
    return s.IP(src=src, dst=dst, ttl=hops, proto=112, **fields)


def dissect_vrrp(payload: bytes, src: str, dst: str, hops: int = 255):
    """lvsmail's VRRP message (an IP payload) under scapy's IP or IPv6 header, dissected from the wire bytes."""
    s = scapy()
    wire = bytes(ip_header(src, dst, hops) / s.Raw(payload))
    return s.IPv6(wire) if _is_v6(src) else s.IP(wire)


def scapy_checksum(packet) -> int:
    """The VRRP checksum scapy computes itself for a dissected packet (its own one deleted, then rebuilt)."""
    s = scapy()
    copy = packet.copy()
    del copy[s.VRRPv3].chksum
    again = s.IPv6(bytes(copy)) if s.IPv6 in copy else s.IP(bytes(copy))
    return again[s.VRRPv3].chksum


def payload_checksum(packet) -> int:
    """scapy's internet checksum of the whole IP payload under its pseudo-header: 0 when the payload's own
    checksum field is right, whatever follows the VRRP address list (scapy's VRRPv3 leaves such bytes out)."""
    from scapy.layers.inet import in4_chksum
    from scapy.layers.inet6 import in6_chksum

    s = scapy()
    if s.IPv6 in packet:
        return in6_chksum(112, packet[s.IPv6], vrrp_message(packet))
    return in4_chksum(112, packet[s.IP], vrrp_message(packet))


def advert(src: str, dst: str, *, vrid: int, priority: int, adv: int, addresses: tuple[str, ...],
           hops: int = 255, version: int = 3, chksum: int | None = None, truncate: int | None = None):
    """A VRRP advert as scapy builds it (checksum scapy's unless given), as a whole IP or IPv6 packet.

    ``version`` other than 3 keeps the VRRPv3 layout with only the version nibble changed;
    ``truncate`` cuts the VRRP message to that many bytes (the IP length follows).
    """
    s = scapy()
    head = ip_header(src, dst, hops)
    body = s.VRRPv3(version=version, vrid=vrid, priority=priority, adv=adv, addrlist=list(addresses),
                    chksum=chksum)
    message = bytes(head / body)[len(head):]  # scapy fills the checksum against the header's addresses
    if truncate is not None:
        message = message[:truncate]
    wire = bytes(ip_header(src, dst, hops) / s.Raw(message))
    return s.IPv6(wire) if _is_v6(src) else s.IP(wire)


def vrrp_message(packet) -> bytes:
    """The IP payload of a scapy packet: the bytes a raw IPv6 socket sends, and lvsmail's ``decode`` reads."""
    s = scapy()
    layer = packet[s.IPv6] if s.IPv6 in packet else packet[s.IP]
    return bytes(layer.payload)


def ether(frame: bytes):
    """An Ethernet frame dissected by scapy."""
    return scapy().Ether(frame)


def icmpv6(message: bytes, src: str, dst: str):
    """An ICMPv6 message (as lvsmail hands it to a raw ICMPv6 socket) under an IPv6 header, dissected."""
    s = scapy()
    wire = bytes(s.IPv6(src=src, dst=dst, hlim=255, nh=58) / s.Raw(message))
    return s.IPv6(wire)
