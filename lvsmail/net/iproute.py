"""The real :class:`~lvsmail.net.backend.NetBackend`: rtnetlink through pyroute2.

The netlink socket belongs to the network namespace of the thread that creates
the backend, so create it inside the namespace you mean to change (for instance
within ``run_in_netns``) and close it there or later from any thread.
pyroute2 is imported on first use: it is slow to import, and unit tests of plans
never need it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from lvsmail.net.backend import NetError

_FAMILY = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
_DEFAULT = {"inet": "0.0.0.0/0", "inet6": "::/0"}
IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254


class IPRouteBackend:
    """Links, addresses and default routes of the current namespace via rtnetlink."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute  # deferred: see module docstring

        self.ipr = IPRoute()

    def close(self) -> None:
        """Close the netlink socket."""
        self.ipr.close()

    def __enter__(self) -> IPRouteBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _index(self, link: str) -> int:
        """Interface index or ENODEV."""
        found = self.ipr.link_lookup(ifname=link)
        if not found:
            raise NetError(errno.ENODEV, f"no such device {link}")
        return found[0]

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a pyroute2 call, turning netlink errors into NetError with the operation named."""
        from pyroute2 import NetlinkError

        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise NetError(exc.code, f"{what}: {exc}") from exc

    def link_exists(self, link: str) -> bool:
        """Whether the interface exists."""
        return bool(self.ipr.link_lookup(ifname=link))

    def link_names(self) -> list[str]:
        """Names of every interface in the namespace."""
        return [msg.get_attr("IFLA_IFNAME") for msg in self.ipr.get_links()]

    def link_is_up(self, link: str) -> bool:
        """IFF_UP of the interface."""
        msg = self.ipr.get_links(self._index(link))[0]
        return bool(msg["flags"] & 1)

    def link_states(self) -> dict[str, bool]:
        """Every interface and whether it is operationally up (IFF_UP and IFF_RUNNING: up with carrier)."""
        return {msg.get_attr("IFLA_IFNAME"): (msg["flags"] & 0x41) == 0x41 for msg in self.ipr.get_links()}

    def set_link_state(self, link: str, up: bool) -> None:
        """``ip link set LINK up|down``."""
        self._call(f"link set {link}", self.ipr.link, "set", index=self._index(link),
                   state="up" if up else "down")

    def addresses(self, link: str) -> list[str]:
        """``address/prefixlen`` of every address on the interface."""
        out = []
        for msg in self.ipr.get_addr(index=self._index(link)):
            addr = msg.get_attr("IFA_ADDRESS")
            if msg["family"] == socket.AF_INET:
                addr = msg.get_attr("IFA_LOCAL") or addr
            out.append(f"{addr}/{msg['prefixlen']}")
        return out

    def add_address(self, link: str, cidr: str) -> None:
        """``ip addr add CIDR dev LINK`` (IPv6 without duplicate address detection)."""
        iface = ipaddress.ip_interface(cidr)
        kwargs = {"index": self._index(link), "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
        if iface.version == 6:
            kwargs.update(family=socket.AF_INET6, flags=IFA_F_NODAD)
        self._call(f"addr add {cidr} dev {link}", self.ipr.addr, "add", **kwargs)

    def del_address(self, link: str, cidr: str) -> None:
        """``ip addr del CIDR dev LINK``."""
        iface = ipaddress.ip_interface(cidr)
        kwargs = {"index": self._index(link), "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
        if iface.version == 6:
            kwargs["family"] = socket.AF_INET6
        self._call(f"addr del {cidr} dev {link}", self.ipr.addr, "del", **kwargs)

    def default_route(self, family: str) -> str | None:
        """Gateway of the main table's default route, if any."""
        for msg in self.ipr.get_routes(family=_FAMILY[family], table=RT_TABLE_MAIN):
            if msg["dst_len"] == 0 and msg.get_attr("RTA_DST") in (None, "0.0.0.0", "::"):
                gw = msg.get_attr("RTA_GATEWAY")
                if gw:
                    return gw
        return None

    def set_default_route(self, family: str, gateway: str) -> None:
        """``ip route replace default via GATEWAY``."""
        self._call(f"route replace default via {gateway}", self.ipr.route, "replace",
                   dst=_DEFAULT[family], gateway=gateway, family=_FAMILY[family])

    def del_default_route(self, family: str) -> None:
        """``ip route del default``."""
        self._call("route del default", self.ipr.route, "del", dst=_DEFAULT[family], family=_FAMILY[family])


class RtnlAddresses:
    """A director's addresses and links over raw rtnetlink (RFC 3549), without pyroute2.

    This is everything the failover needs: add and remove a VIP, list an
    interface's addresses, read the links' states. A new VRRP master must add
    its VIPs at once, and a restarted director must start VRRP at once: under
    load (and in the emulated lab, where importing pyroute2 alone takes 11 s
    and a restarted director needed minutes) pyroute2's import and its own event
    loop on a worker thread were the slowest part of a director's start. The
    kernel answers these small requests inside ``send``, in microseconds, so the
    calls are made directly from the caller's event loop. The socket belongs to
    the namespace of the thread that creates the object.
    """

    RTM_GETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 18, 20, 21, 22
    NLMSG_ERROR, NLMSG_DONE = 2, 3
    NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x200, 0x400
    IFA_ADDRESS, IFA_LOCAL = 1, 2
    IFLA_IFNAME = 3
    IFF_UP_RUNNING = 0x41  # IFF_UP | IFF_RUNNING: up with carrier, as ``ip link`` shows LOWER_UP

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self.sock.bind((0, 0))
        self.sock.settimeout(2.0)
        self.seq = 0

    def close(self) -> None:
        """Close the netlink socket."""
        self.sock.close()

    def add_address(self, link: str, cidr: str) -> None:
        """``ip addr add CIDR dev LINK`` (IPv6 without duplicate address detection); EEXIST if present."""
        self._request(self.RTM_NEWADDR, self.NLM_F_CREATE | self.NLM_F_EXCL, link, cidr, "add")

    def del_address(self, link: str, cidr: str) -> None:
        """``ip addr del CIDR dev LINK``; EADDRNOTAVAIL if absent."""
        self._request(self.RTM_DELADDR, 0, link, cidr, "del")

    def addresses(self, link: str) -> list[str]:
        """``address/prefixlen`` of every address on the interface (``ip addr show dev LINK``)."""
        index = self._index(link, f"addr show dev {link}")
        out = []
        for payload in self._dump(self.RTM_GETADDR, struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0),
                                  f"addr show dev {link}"):
            found = decode_address(payload, index, f"addr show dev {link}")
            if found is not None:
                out.append(found)
        return out

    def link_states(self) -> dict[str, bool]:
        """Every interface and whether it is operationally up (IFF_UP and IFF_RUNNING: up with carrier)."""
        states = {}
        for payload in self._dump(self.RTM_GETLINK, struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, 0, 0, 0),
                                  "link show"):
            found = decode_link(payload, "link show")
            if found is not None:
                states[found[0]] = found[1]
        return states

    def _index(self, link: str, what: str) -> int:
        try:
            return socket.if_nametoindex(link)
        except OSError:
            raise NetError(errno.ENODEV, f"{what}: no such device {link}") from None

    def _dump(self, kind: int, body: bytes, what: str) -> list[bytes]:
        """Every message of a dump request (until NLMSG_DONE): their payloads after the netlink header."""
        self.seq += 1
        header = struct.pack("=IHHII", 16 + len(body), kind, self.NLM_F_REQUEST | self.NLM_F_DUMP, self.seq, 0)
        payloads: list[bytes] = []
        try:
            self.sock.send(header + body)
            while True:
                more, done = parse_dump(self.sock.recv(1 << 16), self.seq, what)
                payloads += more
                if done:
                    return payloads
        except OSError as exc:
            if isinstance(exc, NetError):
                raise
            raise NetError(exc.errno or errno.EIO, f"{what}: {exc}") from exc

    def _request(self, kind: int, flags: int, link: str, cidr: str, verb: str) -> None:

        what = f"addr {verb} {cidr} dev {link}"
        index = self._index(link, what)
        iface = ipaddress.ip_interface(cidr)
        family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
        packed = iface.ip.packed
        body = struct.pack("=BBBBI", family, iface.network.prefixlen, IFA_F_NODAD if iface.version == 6 else 0,
                           0, index)
        for attr in (self.IFA_LOCAL, self.IFA_ADDRESS):
            body += struct.pack("=HH", 4 + len(packed), attr) + packed  # 4- and 16-byte addresses stay aligned
        self.seq += 1
        header = struct.pack("=IHHII", 16 + len(body), kind, self.NLM_F_REQUEST | self.NLM_F_ACK | flags, self.seq, 0)
        try:
            self.sock.send(header + body)
            while not parse_ack(self.sock.recv(65536), self.seq, what):
                pass
        except NetError:
            raise
        except OSError as exc:
            raise NetError(exc.errno or errno.EIO, f"{what}: {exc}") from exc


# -- decoding rtnetlink replies (RFC 3549; include/uapi/linux/netlink.h, rtnetlink.h) -------------------
# Pure functions over one datagram or one message, so that they are tested and fuzzed without a socket.
# A reply that cannot be read raises NetError(EIO) naming the request; nothing else escapes.

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFINFOMSG = struct.Struct("=BBHiII")  # family, pad, type, index, flags, change
_ERRNO = struct.Struct("=i")
#: Largest errno the kernel returns (MAX_ERRNO, include/linux/err.h); netlink errors are -errno.
MAX_ERRNO = 4095


def _malformed(what: str, why: str) -> NetError:
    return NetError(errno.EIO, f"{what}: malformed netlink reply ({why})")


def _messages(data: bytes, what: str):
    """(type, seq, payload) of each netlink message in a datagram; NetError when one is truncated."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            raise _malformed(what, f"message length {length} at offset {offset} of {len(data)} bytes")
        yield mtype, seq, data[offset + _NLMSG.size:offset + length]
        offset += (length + 3) & ~3


def _error_code(payload: bytes, what: str) -> int:
    """The errno of an NLMSG_ERROR (stored negated; 0 is an ACK)."""
    if len(payload) < _ERRNO.size:
        raise _malformed(what, "NLMSG_ERROR without an error code")
    code = -_ERRNO.unpack_from(payload)[0]
    if not 0 <= code <= MAX_ERRNO:
        raise _malformed(what, f"error code {-code} is not a negated errno")
    return code


def parse_dump(data: bytes, seq: int, what: str) -> tuple[list[bytes], bool]:
    """The payloads of the messages answering ``seq`` in one datagram, and whether NLMSG_DONE ended the dump.

    NetError carries the kernel's errno for an NLMSG_ERROR, or EIO for a malformed datagram.
    """
    payloads = []
    for mtype, mseq, payload in _messages(data, what):
        if mseq != seq:
            continue
        if mtype == RtnlAddresses.NLMSG_DONE:
            return payloads, True
        if mtype == RtnlAddresses.NLMSG_ERROR:
            code = _error_code(payload, what) or errno.EIO
            raise NetError(code, f"{what}: {os.strerror(code)}")
        payloads.append(payload)
    return payloads, False


def parse_ack(data: bytes, seq: int, what: str) -> bool:
    """Whether the datagram holds the ACK of request ``seq``; NetError for a refusal or a malformed datagram."""
    for mtype, mseq, payload in _messages(data, what):
        if mtype == RtnlAddresses.NLMSG_ERROR and mseq == seq:
            code = _error_code(payload, what)
            if code:
                raise NetError(code, f"{what}: {os.strerror(code)}")
            return True
    return False


def decode_address(payload: bytes, index: int, what: str = "addr show") -> str | None:
    """``address/prefixlen`` of one RTM_NEWADDR message if it is an IPv4/IPv6 address of interface ``index``.

    IFA_LOCAL is the IPv4 interface's own address (IFA_ADDRESS is the peer's on point-to-point
    links); IPv6 has only IFA_ADDRESS. NetError(EIO) when the message is malformed.
    """
    if len(payload) < _IFADDRMSG.size:
        raise _malformed(what, f"address message of {len(payload)} bytes")
    family, prefixlen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(payload)
    if ifindex != index or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attrs = dict(_attributes(payload, _IFADDRMSG.size, what))
    raw = attrs.get(RtnlAddresses.IFA_LOCAL) if family == socket.AF_INET else None
    raw = raw or attrs.get(RtnlAddresses.IFA_ADDRESS)
    if raw is None:
        return None
    size = 4 if family == socket.AF_INET else 16
    if len(raw) != size or prefixlen > size * 8:
        raise _malformed(what, f"address of {len(raw)} bytes, prefix /{prefixlen} for family {family}")
    # ipaddress's text form, the one VIPs are configured and compared in (inet_ntop differs for
    # IPv4-mapped IPv6 addresses).
    return f"{ipaddress.ip_address(raw)}/{prefixlen}"


def decode_link(payload: bytes, what: str = "link show") -> tuple[str, bool] | None:
    """(name, operationally up) of one RTM_NEWLINK message, or None without a name; NetError(EIO) if malformed."""
    if len(payload) < _IFINFOMSG.size:
        raise _malformed(what, f"link message of {len(payload)} bytes")
    _family, _pad, _type, _index, flags, _change = _IFINFOMSG.unpack_from(payload)
    name = dict(_attributes(payload, _IFINFOMSG.size, what)).get(RtnlAddresses.IFLA_IFNAME)
    if name is None:
        return None
    # The kernel's names are NUL-terminated bytes (dev_valid_name refuses '/', ':' and spaces, not
    # non-ASCII); shown with replacement characters rather than refused.
    up = RtnlAddresses.IFF_UP_RUNNING
    return name.split(b"\0", 1)[0].decode(errors="replace"), (flags & up) == up


def _attributes(payload: bytes, offset: int, what: str = "rtnetlink"):
    """(type, value) of each rtnetlink attribute after a fixed header of ``offset`` bytes (RFC 3549 §2.3.2)."""
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        if length < 4:
            return
        if offset + length > len(payload):
            raise _malformed(what, f"attribute {kind & 0x3FFF} of {length} bytes runs past its message")
        yield kind & 0x3FFF, payload[offset + 4:offset + length]  # without NLA_F_NESTED/NET_BYTEORDER
        offset += (length + 3) & ~3
