"""VRRP version 3 advertisements (RFC 5798 §5), encoded and decoded, IPv4 and IPv6.

An advertisement is the only VRRPv3 message. Its checksum covers a pseudo-header
for both families (RFC 5798 §5.2.8) — unlike VRRPv2, whose IPv4 checksum covered
the VRRP message alone — so a packet is checked with the source and destination
addresses it travelled with.

lvsmail may append an authentication trailer (see :mod:`lvsmail.vrrp.auth`)
after the address list. VRRPv3 itself has no authentication; the trailer is
counted in the IP payload and in the checksum, so a receiver that checks the
payload length against the address count (keepalived does) drops such packets:
with a key configured, only lvsmail peers can take part.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

#: IP protocol number of VRRP (RFC 5798 §5.1.1.4, §5.1.2.3).
IPPROTO_VRRP = 112
#: Destination of multicast adverts (RFC 5798 §5.1.1.2, §5.1.2.2).
MCAST_V4 = "224.0.0.18"
MCAST_V6 = "ff02::12"
VERSION = 3
TYPE_ADVERTISEMENT = 1
#: The 12-bit Max Adver Int field counts centiseconds (RFC 5798 §5.2.7): 0.01 s … 40.95 s.
MAX_ADVER_INT = 0x0FFF
_HEADER = struct.Struct("!BBBBHH")


class PacketError(ValueError):
    """A received packet is not a valid VRRPv3 advertisement; the message says why."""


@dataclass(frozen=True)
class Advertisement:
    """One VRRPv3 advertisement: who (VRID), how keen (priority), how often, for which addresses."""

    vrid: int
    priority: int
    max_adver_int: int  # centiseconds
    addresses: tuple[str, ...]
    family: int = socket.AF_INET
    trailer: bytes = b""  # bytes after the address list (lvsmail's authentication), not interpreted here

    def __post_init__(self) -> None:
        if not 1 <= self.vrid <= 255:
            raise ValueError(f"VRID {self.vrid} is outside 1..255")
        if not 0 <= self.priority <= 255:
            raise ValueError(f"priority {self.priority} is outside 0..255")
        if not 1 <= self.max_adver_int <= MAX_ADVER_INT:
            raise ValueError(f"advert interval {self.max_adver_int} cs is outside 1..{MAX_ADVER_INT}")
        if len(self.addresses) > 255:
            raise ValueError("at most 255 addresses fit in one advertisement")


def _addr_bytes(family: int, address: str) -> bytes:
    """Packed address, checked against the family."""
    addr = ipaddress.ip_address(address)
    if (addr.version == 6) != (family == socket.AF_INET6):
        raise ValueError(f"{address} does not belong in an IPv{4 if family == socket.AF_INET else 6} advertisement")
    return addr.packed


def pseudo_header(family: int, src: str, dst: str, length: int) -> bytes:
    """The pseudo-header the checksum covers (RFC 5798 §5.2.8; RFC 768 style for IPv4, RFC 8200 §8.1 for IPv6)."""
    s, d = _addr_bytes(family, src), _addr_bytes(family, dst)
    if family == socket.AF_INET:
        return s + d + struct.pack("!BBH", 0, IPPROTO_VRRP, length)
    return s + d + struct.pack("!I3xB", length, IPPROTO_VRRP)


def internet_checksum(data: bytes) -> int:
    """One's-complement sum of 16-bit words (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def body(adv: Advertisement) -> bytes:
    """The message with a zero checksum and without trailer: what the authentication tag signs."""
    addrs = b"".join(_addr_bytes(adv.family, a) for a in adv.addresses)
    head = _HEADER.pack((VERSION << 4) | TYPE_ADVERTISEMENT, adv.vrid, adv.priority, len(adv.addresses),
                        adv.max_adver_int & MAX_ADVER_INT, 0)
    return head + addrs


def encode(adv: Advertisement, src: str, dst: str) -> bytes:
    """The VRRP message (IP payload) as sent from ``src`` to ``dst``, checksum filled in."""
    msg = body(adv) + adv.trailer
    csum = internet_checksum(pseudo_header(adv.family, src, dst, len(msg)) + msg)
    return msg[:6] + struct.pack("!H", csum) + msg[8:]


def decode(payload: bytes, src: str, dst: str, family: int = socket.AF_INET) -> Advertisement:
    """Parse and verify a VRRP message received from ``src`` for ``dst``; PacketError says what is wrong."""
    if len(payload) < _HEADER.size:
        raise PacketError(f"{len(payload)} bytes is shorter than a VRRP header")
    vt, vrid, priority, count, rsvd_int, _csum = _HEADER.unpack_from(payload)
    if vt >> 4 != VERSION:
        raise PacketError(f"version {vt >> 4}, expected 3")
    if vt & 0x0F != TYPE_ADVERTISEMENT:
        raise PacketError(f"type {vt & 0x0F} is not an advertisement")
    size = 4 if family == socket.AF_INET else 16
    end = _HEADER.size + count * size
    if len(payload) < end:
        raise PacketError(f"{count} addresses announced but only {len(payload) - _HEADER.size} bytes follow")
    if internet_checksum(pseudo_header(family, src, dst, len(payload)) + payload) != 0:
        raise PacketError("bad checksum")
    if vrid == 0:
        raise PacketError("VRID 0 is not valid")
    interval = rsvd_int & MAX_ADVER_INT
    if interval == 0:
        raise PacketError("advert interval 0")
    addrs = tuple(
        str(ipaddress.ip_address(payload[i:i + size])) for i in range(_HEADER.size, end, size)
    )
    return Advertisement(vrid, priority, interval, addrs, family, payload[end:])


def parse_ipv4(packet: bytes) -> tuple[str, str, int, bytes]:
    """(source, destination, TTL, payload) of an IPv4 datagram as a raw socket returns it."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise PacketError("not an IPv4 datagram")
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if ihl < 20 or len(packet) < ihl or total < ihl:
        raise PacketError("truncated IPv4 header")
    if packet[9] != IPPROTO_VRRP:
        raise PacketError(f"IP protocol {packet[9]} is not VRRP")
    src = socket.inet_ntop(socket.AF_INET, packet[12:16])
    dst = socket.inet_ntop(socket.AF_INET, packet[16:20])
    return src, dst, packet[8], packet[ihl:min(total, len(packet))]


def ipv4_header(src: str, dst: str, payload_len: int, ttl: int = 255) -> bytes:
    """An IPv4 header for a VRRP datagram (the kernel fills the ID and header checksum when zero)."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + payload_len, 0, 0, ttl, IPPROTO_VRRP, 0,
                       socket.inet_pton(socket.AF_INET, src), socket.inet_pton(socket.AF_INET, dst))


def centiseconds(seconds: float) -> int:
    """An interval in seconds as the 12-bit field's centiseconds, rounded, within 1..4095."""
    cs = round(seconds * 100)
    if not 1 <= cs <= MAX_ADVER_INT:
        raise ValueError(f"advert interval {seconds} s is outside 0.01..40.95 s")
    return cs
