"""Packet capture and ARP probing in a namespace with plain AF_PACKET sockets.

A raw socket and a few ``struct`` unpacks do everything the lab asserts about
the wire (Ethernet addresses, IPv4/IPv6 headers, IP-in-IP, TCP ports and flags),
and unlike scapy cost nothing to import, which matters under emulation where
importing scapy takes twenty seconds. A capture is ready as soon as its socket is
bound, so there is no start-up race with the traffic it should see. Each frame
keeps its bytes as well, for tests that dissect it with scapy themselves, and
whether the kernel had computed its checksums (see :class:`Captured`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lvsmail.net import netns

ETH_P_ALL = 0x0003
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST, PACKET_OUTGOING = 0, 1, 2, 3, 4
IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_IPV6 = 4, 6, 41
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
#: setsockopt(SOL_PACKET, PACKET_AUXDATA): each frame comes with a struct tpacket_auxdata (linux/if_packet.h).
SOL_PACKET, PACKET_AUXDATA = 263, 8
_AUXDATA = struct.Struct("=IIIHHHH")  # tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci, tp_vlan_tpid
#: tp_status bit: the transport checksum is left to the NIC (CHECKSUM_PARTIAL, as on a veth).
TP_STATUS_CSUMNOTREADY = 1 << 3


def mac_str(raw: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True)
class Tcp:
    """The parts of a TCP header the lab looks at."""

    sport: int
    dport: int
    flags: int

    @property
    def syn(self) -> bool:
        """SYN without ACK: a connection attempt."""
        return bool(self.flags & TCP_SYN) and not self.flags & TCP_ACK


@dataclass(frozen=True)
class Ip:
    """An IPv4 or IPv6 header, with what it carries (an inner IP packet or TCP)."""

    version: int
    src: str
    dst: str
    proto: int
    inner: Ip | None = None
    tcp: Tcp | None = None


@dataclass(frozen=True)
class Arp:
    """An ARP request or reply for IPv4 over Ethernet."""

    op: int  # 1 request, 2 reply
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str


@dataclass(frozen=True)
class Frame:
    """One Ethernet frame as the lab sees it."""

    dst: str
    src: str
    ethertype: int
    ip: Ip | None = None
    arp: Arp | None = None


def parse_ip(data: bytes, depth: int = 0) -> Ip | None:
    """Parse an IPv4/IPv6 packet (following IP-in-IP one level); None if it is not one."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        proto = data[9]
        src, dst = str(ipaddress.IPv4Address(data[12:16])), str(ipaddress.IPv4Address(data[16:20]))
        payload = data[ihl:]
    elif version == 6 and len(data) >= 40:
        proto = data[6]
        src, dst = str(ipaddress.IPv6Address(data[8:24])), str(ipaddress.IPv6Address(data[24:40]))
        payload = data[40:]  # extension headers are not followed: the lab sends none
    else:
        return None
    inner = tcp = None
    if proto in (IPPROTO_IPIP, IPPROTO_IPV6) and depth == 0:
        inner = parse_ip(payload, depth + 1)
    elif proto == IPPROTO_TCP and len(payload) >= 14:
        sport, dport = struct.unpack("!HH", payload[:4])
        tcp = Tcp(sport, dport, payload[13])
    return Ip(version, src, dst, proto, inner, tcp)


def parse_frame(data: bytes) -> Frame | None:
    """Parse an Ethernet frame; None if it is too short."""
    if len(data) < 14:
        return None
    dst, src, ethertype = data[0:6], data[6:12], struct.unpack("!H", data[12:14])[0]
    body = data[14:]
    ip = arp = None
    if ethertype in (ETH_P_IP, ETH_P_IPV6):
        ip = parse_ip(body)
    elif ethertype == ETH_P_ARP and len(body) >= 28:
        op = struct.unpack("!H", body[6:8])[0]
        arp = Arp(op, mac_str(body[8:14]), str(ipaddress.IPv4Address(body[14:18])),
                  mac_str(body[18:24]), str(ipaddress.IPv4Address(body[24:28])))
    return Frame(mac_str(dst), mac_str(src), ethertype, ip, arp)


@dataclass(frozen=True)
class Captured:
    """A frame with when it was seen, which way it went (PACKET_OUTGOING or not) and its bytes.

    ``csum_ready`` is False when the kernel left the TCP/UDP checksum to the NIC
    (TP_STATUS_CSUMNOTREADY): the field then holds only the pseudo-header sum, as
    veth devices hand such packets on without ever completing it.
    """

    time: float
    pkttype: int
    frame: Frame
    raw: bytes = b""
    csum_ready: bool = True

    @property
    def outgoing(self) -> bool:
        """Sent by this namespace rather than received."""
        return self.pkttype == PACKET_OUTGOING


class Capture:
    """Capture frames on one interface of one namespace in a background thread (a context manager)."""

    def __init__(self, ns: str | None, ifname: str, max_frames: int = 50000) -> None:
        self.ns, self.ifname, self.max_frames = ns, ifname, max_frames
        self.frames: list[Captured] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sock = netns.socket_in_netns(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self._sock.bind((ifname, 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._loop, name=f"capture:{ns}:{ifname}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        """Read frames until stopped or full."""
        while not self._stop.is_set() and len(self.frames) < self.max_frames:
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(65535, socket.CMSG_SPACE(_AUXDATA.size))
            except TimeoutError:
                continue
            except OSError:
                break
            frame = parse_frame(data)
            if frame is None:
                continue
            status = next((_AUXDATA.unpack_from(d)[0] for level, kind, d in ancillary
                           if level == SOL_PACKET and kind == PACKET_AUXDATA and len(d) >= _AUXDATA.size), 0)
            with self._cond:
                self.frames.append(Captured(time.monotonic(), addr[2], frame, data,
                                            not status & TP_STATUS_CSUMNOTREADY))
                self._cond.notify_all()

    def close(self) -> None:
        """Stop capturing."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def mark(self) -> int:
        """Position to search from: frames captured after this call."""
        with self._cond:
            return len(self.frames)

    def matching(self, predicate: Callable[[Captured], bool], since: int = 0) -> list[Captured]:
        """Captured frames (from position ``since``) that satisfy ``predicate``."""
        with self._cond:
            return [c for c in self.frames[since:] if predicate(c)]

    def wait_for(self, predicate: Callable[[Captured], bool], timeout: float, since: int = 0) -> Captured | None:
        """First frame from ``since`` on that satisfies ``predicate``, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        pos = since
        with self._cond:
            while True:
                for c in self.frames[pos:]:
                    if predicate(c):
                        return c
                pos = len(self.frames)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP who-has frame."""
    eth = b"\xff" * 6 + sender_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + sender_mac + ipaddress.IPv4Address(sender_ip).packed
    arp += b"\x00" * 6 + ipaddress.IPv4Address(target_ip).packed
    return eth + arp


def arp_probe(ns: str | None, ifname: str, sender_ip: str, target_ip: str, timeout: float = 1.0,
              tries: int = 2) -> list[str]:
    """Ask who-has ``target_ip`` on the interface from namespace ``ns`` and return the MACs that answered."""
    from lvsmail.realserver.arp import who_has

    sock = netns.socket_in_netns(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    return who_has(ifname, sender_ip, target_ip, timeout, tries, sock=sock)
