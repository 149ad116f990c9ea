"""Who answers ARP for an address on a LAN: one raw AF_PACKET socket, no packet library.

Before a DR real server takes the VIP on ``lo``, join asks the LAN who has the VIP.
Only the directors may answer; any other station answering means another host holds
the VIP or a real server answers ARP for it, and clients would be sent there directly
(RFC 826 request/reply over Ethernet).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

ETH_P_ARP = 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST = b"\xff" * 6


def request_frame(my_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    """An Ethernet broadcast ARP who-has ``target_ip`` from ``sender_ip``."""
    eth = BROADCAST + my_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, ARP_REQUEST, my_mac,
                      ipaddress.IPv4Address(sender_ip).packed, b"\0" * 6, ipaddress.IPv4Address(target_ip).packed)
    return eth + arp


def reply_from(frame: bytes, target_ip: str) -> str | None:
    """The sender MAC of an ARP reply for ``target_ip``, or None for any other frame."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    _htype, _ptype, _hlen, _plen, op, smac, sip, _tmac, _tip = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    if op != ARP_REPLY or sip != ipaddress.IPv4Address(target_ip).packed:
        return None
    return ":".join(f"{b:02x}" for b in smac)


def who_has(interface: str, sender_ip: str, target_ip: str, timeout: float = 1.0, tries: int = 2, *,
            sock: socket.socket | None = None) -> list[str]:
    """MACs that answer ARP for ``target_ip`` on ``interface`` within ``timeout`` seconds (needs CAP_NET_RAW).

    ``sock``: an AF_PACKET/ETH_P_ARP socket opened elsewhere (the lab opens it in a namespace);
    it is closed on return like the one made here.
    """
    if sock is None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.bind((interface, 0))
        my_mac = sock.getsockname()[4]
        answers: set[str] = set()
        for _ in range(tries):
            sock.send(request_frame(my_mac, sender_ip, target_ip))
            deadline = time.monotonic() + timeout / tries
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    break
                mac = reply_from(data, target_ip)
                if mac is not None:
                    answers.add(mac)
        return sorted(answers)
    finally:
        sock.close()
