"""Tell the link that addresses moved: gratuitous ARP (RFC 5227 §3 announcements) and unsolicited NA.

A new master must make hosts and switches on the segment update their caches
at once (RFC 5798 §6.4.1 / §6.4.2: "broadcast a gratuitous ARP request ... for
each IPv4 address", "send an unsolicited ND Neighbor Advertisement ... for each
IPv6 address"). One packet can be lost, so each is repeated ``count`` times
``interval`` seconds apart. Frames are built here by hand (scapy takes far too
long to import in the lab VM).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct

log = logging.getLogger("lvsmail.vrrp")

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ALL_NODES = "ff02::1"
ICMPV6_NA = 136
NA_FLAG_OVERRIDE = 0x20000000  # RFC 4861 §4.4: O flag, replace the cached link-layer address
ND_OPT_TARGET_LLADDR = 2


def garp_frame(mac: bytes, address: str) -> bytes:
    """An Ethernet broadcast ARP request whose sender and target are both ``address`` (RFC 5227 §3)."""
    ip = socket.inet_aton(address)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def unsolicited_na(mac: bytes, address: str) -> bytes:
    """An ICMPv6 Neighbor Advertisement (override, not solicited) with the target link-layer option.

    The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets (RFC 3542 §3.1).
    """
    target = ipaddress.IPv6Address(address).packed
    option = struct.pack("!BB6s", ND_OPT_TARGET_LLADDR, 1, mac)
    return struct.pack("!BBHI", ICMPV6_NA, 0, 0, NA_FLAG_OVERRIDE) + target + option


class Announcer:
    """Sends the announcements through sockets kept open per interface.

    Opening and closing an AF_PACKET socket costs tens of milliseconds (closing
    one waits for an RCU grace period), which would delay a new master's first
    gratuitous ARP; so the sockets are opened once (``prepare`` at start-up)
    and reused. A socket bound with protocol 0 receives nothing.
    """

    def __init__(self) -> None:
        self._packet: dict[str, socket.socket] = {}
        self._icmp6: dict[str, socket.socket] = {}

    def prepare(self, interface: str) -> None:
        """Open the interface's sockets now, so the first announcement goes out at once."""
        self._packet_socket(interface)

    def _packet_socket(self, interface: str) -> socket.socket:
        s = self._packet.get(interface)
        if s is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                s.bind((interface, 0))
            except OSError:
                s.close()
                raise
            self._packet[interface] = s
        return s

    def _icmp6_socket(self, interface: str) -> socket.socket:
        s = self._icmp6.get(interface)
        if s is None:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861 §7.1.2
            s.setsockopt(socket.IPPROTO_ICMPV6, 1, b"\xff" * 32)  # ICMP6_FILTER: block every type, we only send
            self._icmp6[interface] = s
        return s

    def send_once(self, interface: str, addresses: tuple[str, ...]) -> None:
        """One gratuitous ARP per IPv4 address and one unsolicited NA per IPv6 address.

        A socket of an interface that was re-created fails with ENODEV/ENXIO: it is
        dropped and opened again once.
        """
        try:
            self._send(interface, addresses)
        except OSError:
            self.forget(interface)
            self._send(interface, addresses)

    def _send(self, interface: str, addresses: tuple[str, ...]) -> None:
        v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
        packet = self._packet_socket(interface)
        mac = packet.getsockname()[4][:6]
        for a in v4:
            packet.send(garp_frame(mac, a))
        if v6:
            index = socket.if_nametoindex(interface)
            s = self._icmp6_socket(interface)
            for a in v6:
                s.sendto(unsolicited_na(mac, a), (ALL_NODES, 0, 0, index))

    async def announce(self, interface: str, addresses: tuple[str, ...], count: int = 3,
                       interval: float = 0.1) -> None:
        """Send the announcements ``count`` times; failures are logged (the VIP is up regardless)."""
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            try:
                self.send_once(interface, addresses)
                if i == 0:
                    log.info("vrrp %s: announced %s (repeating %d times every %g s)", interface,
                             ", ".join(addresses), count - 1, interval)
            except OSError as exc:
                log.warning("vrrp %s: announcing %s failed: %s", interface, ", ".join(addresses), exc)

    def forget(self, interface: str) -> None:
        """Close the interface's sockets."""
        for table in (self._packet, self._icmp6):
            s = table.pop(interface, None)
            if s is not None:
                s.close()

    def close(self) -> None:
        """Close every socket."""
        for interface in set(self._packet) | set(self._icmp6):
            self.forget(interface)
