"""Raw VRRP sockets: send and receive adverts on one interface (RFC 5798 §5.1, §7.1).

Adverts go to 224.0.0.18 / ff02::12 (or to each configured unicast peer, for
networks without multicast) with TTL / hop limit 255, from the interface's
primary address (IPv4) or link-local address (IPv6). On receipt a packet is
dropped, cheapest check first (RFC 5798 section 7.1), when it is not a whole
IPv4 datagram, its TTL / hop limit is not 255, it is not from a configured
unicast peer, its version is not 3 or its checksum is wrong, or, with a key,
its lvsmail authentication trailer is missing, wrong or replayed (the instance
then drops a foreign VRID and rate-limits the rest: ``lvsmail.vrrp.guard``).
Every drop is counted in ``guard``; none is logged on its own.

IPv4 adverts are sent with ``IP_HDRINCL`` so the source is the primary address
the checksum was computed over, whatever address the kernel would have chosen.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass

from lvsmail.vrrp import auth
from lvsmail.vrrp.guard import ReceiveGuard
from lvsmail.vrrp.packet import (
    IPPROTO_VRRP,
    MCAST_V4,
    MCAST_V6,
    Advertisement,
    PacketError,
    decode,
    encode,
    ipv4_header,
    parse_ipv4,
)

log = logging.getLogger("lvsmail.vrrp")

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_MULTICAST_ALL = 49  # linux/in.h: deliver only groups joined on this socket
IPV6_MULTICAST_ALL = 29
#: Seconds between repeated warnings about the same sender's unauthenticated adverts.
WARN_EVERY = 60.0


@dataclass(frozen=True)
class Received:
    """One advert as it arrived: who sent it, with which TTL, and what it said."""

    source: str
    ttl: int
    advert: Advertisement


class VrrpSocket:
    """One raw socket of one family on one interface, joined to the VRRP group (or talking unicast)."""

    def __init__(self, interface: str, family: int, source: str, *, peers: tuple[str, ...] = (),
                 key: bytes | None = None) -> None:
        self.interface = interface
        self.family = family
        self.source = source
        self.peers = peers
        self.key = key
        self.verifier = auth.Verifier(key) if key else None
        self._warned: dict[tuple[str, str], float] = {}
        self.guard = ReceiveGuard(f"{interface} {'IPv6' if family == socket.AF_INET6 else 'IPv4'}")
        self.index = socket.if_nametoindex(interface)
        self.group = MCAST_V4 if family == socket.AF_INET else MCAST_V6
        self.sock = self._open()

    def _open(self) -> socket.socket:
        """Create, bind to the device, set TTL 255, join the group."""
        s = socket.socket(self.family, socket.SOCK_RAW, IPPROTO_VRRP)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            if self.family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                mreqn = socket.inet_aton(self.group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", self.index)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                if not self.peers:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.index)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                s.bind((self.source, 0, 0, self.index))
                if not self.peers:
                    mreq = socket.inet_pton(socket.AF_INET6, self.group) + struct.pack("@I", self.index)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

    def fileno(self) -> int:
        """For ``loop.add_reader``."""
        return self.sock.fileno()

    def close(self) -> None:
        """Leave the group and close (the kernel drops the membership with the socket); log the last drops."""
        self.sock.close()
        self.guard.flush()

    def send(self, adv: Advertisement) -> None:
        """Send to the group, or to every unicast peer; an error is raised to the caller to log."""
        if self.key:
            adv = auth.sign(self.key, adv)
        for dst in self.peers or (self.group,):
            payload = encode(adv, self.source, dst)
            if self.family == socket.AF_INET:
                self.sock.sendto(ipv4_header(self.source, dst, len(payload)) + payload, (dst, 0))
            else:
                self.sock.sendto(payload, (dst, 0, 0, self.index))

    def receive(self) -> Received | None:
        """Read one packet; None when there was none or it is not an acceptable advert (counted in ``guard``)."""
        try:
            if self.family == socket.AF_INET:
                data, _addr = self.sock.recvfrom(4096)
                src, dst, ttl, payload = parse_ipv4(data)
            else:
                payload, anc, _flags, addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4))
                src, ttl, dst = addr[0].split("%")[0], -1, self.group
                for level, kind, value in anc:
                    if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
                        ttl = struct.unpack("@i", value[:4])[0]
                    elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                        dst = socket.inet_ntop(socket.AF_INET6, value[:16])
        except BlockingIOError:
            return None
        except (OSError, PacketError) as exc:
            log.debug("vrrp %s: unreadable packet: %s", self.interface, exc)
            self.guard.drop("malformed", "?")
            return None
        if ttl != 255:  # §7.1: crossed a router, so not from our link (checked before anything costs more)
            self.guard.drop("ttl", src)
            return None
        if self.peers and src not in self.peers:
            self.guard.drop("not-a-peer", src)
            return None
        try:
            adv = decode(payload, src, dst, self.family)
        except PacketError as exc:
            log.debug("vrrp %s: dropped packet from %s: %s", self.interface, src, exc)
            self.guard.drop("malformed", src)
            return None
        if self.verifier is not None:
            try:
                self.verifier.verify(src, adv)
            except auth.AuthError as exc:
                # Once a minute per sender and reason: a misconfigured peer sends ten adverts a second.
                key, now = (src, str(exc)), time.monotonic()
                level = logging.WARNING if now - self._warned.get(key, -WARN_EVERY) >= WARN_EVERY else logging.DEBUG
                if level == logging.WARNING:
                    self._warned[key] = now
                log.log(level, "vrrp %s: dropped advert from %s (VRID %d): %s", self.interface, src, adv.vrid, exc)
                self.guard.drop("auth", src)
                return None
        return Received(src, ttl, adv)
