"""The IPVS table as plain values: what the kernel holds, independent of netlink.

Keys identify an entry the way the kernel does (a service by family, protocol,
address and port, or by family and firewall mark; a destination by address and
port inside its service). Settings are what can be edited in place. Counters are
read-only statistics that a dump may carry.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}

#: Service flag bits (include/uapi/linux/ip_vs.h).
F_PERSISTENT = 0x0001
F_HASHED = 0x0002
F_ONEPACKET = 0x0004


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """Identity of a virtual service; fwmark services have protocol 0, addr "" and port 0."""

    af: int
    protocol: int = 0
    addr: str = ""
    port: int = 0
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}" + (" IPv6" if self.af == socket.AF_INET6 else "")
        return f"{PROTOCOL_NAMES.get(self.protocol, self.protocol)!s}".upper() + " " + hostport(self.addr, self.port)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Editable settings of a virtual service (``ipvsadm -E``)."""

    scheduler: str = "wlc"
    flags: int = 0  # F_PERSISTENT, F_ONEPACKET
    timeout: int = 0  # persistence timeout, seconds
    netmask: int = 0xFFFFFFFF  # IPv4: mask as an integer; IPv6: prefix length

    @property
    def persistent(self) -> bool:
        """True when the service pins clients to one real server."""
        return bool(self.flags & F_PERSISTENT)


@dataclass(frozen=True, slots=True, order=True)
class DestKey:
    """Identity of a real server inside one service."""

    addr: str
    port: int

    def __str__(self) -> str:
        return hostport(self.addr, self.port)


#: Kernel forwarding-method numbers (IP_VS_CONN_F_MASQ/TUNNEL/DROUTE).
FWD_CODES = {"nat": 0, "tun": 2, "dr": 3}
FWD_NAMES = {v: k for k, v in FWD_CODES.items()}
FWD_IPVSADM = {"nat": "Masq", "tun": "Tunnel", "dr": "Route"}


@dataclass(frozen=True, slots=True)
class DestSettings:
    """Editable settings of a real server (``ipvsadm -e``)."""

    forwarding: str = "dr"
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    af: int = 0  # family of the real server's address; 0 = same as the service


@dataclass(frozen=True, slots=True)
class Counters:
    """Statistics the kernel keeps per service and per destination (``ipvsadm -Ln --stats/--rate``)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(slots=True)
class DestEntry:
    """A real server as read from (or meant for) the kernel."""

    settings: DestSettings
    active: int = 0
    inactive: int = 0
    persistent: int = 0
    counters: Counters = field(default_factory=Counters)


@dataclass(slots=True)
class ServiceEntry:
    """A virtual service and its real servers."""

    settings: ServiceSettings
    dests: dict[DestKey, DestEntry] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)


#: The whole table, or the part of it one cluster file owns.
Table = dict[ServiceKey, ServiceEntry]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """IPVS connection timeouts in seconds; 0 in a request means "leave unchanged"."""

    tcp: int = 0
    tcpfin: int = 0
    udp: int = 0


#: Defaults the kernel fills in for a sync daemon started without them (ip_vs_sync.c).
SYNC_DEFAULT_GROUP, SYNC_DEFAULT_GROUP6 = "224.0.0.81", "ff02::81"
SYNC_DEFAULT_PORT = 8848
SYNC_DEFAULT_TTL = 1
SYNC_STATES = ("master", "backup")


@dataclass(frozen=True, slots=True)
class SyncDaemon:
    """One IPVS connection-synchronisation daemon (``ipvsadm --start-daemon``).

    The master multicasts the state of new and changed connections on ``interface``;
    a backup listening with the same ``syncid`` enters them into its own table, so an
    established session continues when the backup takes over the VIP. A director runs
    at most one of each. Zero or empty optional fields mean "the kernel's default".
    """

    state: str  # "master" | "backup"
    interface: str
    syncid: int = 0  # 0-255 on the wire (sync messages carry one byte)
    maxlen: int = 0  # UDP payload size; 0 = from the interface MTU
    group: str = ""  # multicast group; "" = 224.0.0.81
    port: int = 0  # UDP port; 0 = 8848
    ttl: int = 0  # multicast TTL; 0 = 1

    def covers(self, running: SyncDaemon) -> bool:
        """True when ``running`` (as the kernel reports it) is what this request asks for.

        The kernel reports its choices for the fields left at 0 here, so only the
        fields set in this request are compared.
        """
        if (self.state, self.interface, self.syncid) != (running.state, running.interface, running.syncid):
            return False
        if self.group and ipaddress.ip_address(self.group) != ipaddress.ip_address(running.group or "0.0.0.0"):
            return False
        return all(not want or want == got for want, got in
                   ((self.maxlen, running.maxlen), (self.port, running.port), (self.ttl, running.ttl)))

    def __str__(self) -> str:
        extra = "".join(f" {k} {v}" for k, v in (("group", self.group), ("port", self.port), ("ttl", self.ttl),
                                                  ("maxlen", self.maxlen)) if v)
        return f"{self.state} sync daemon on {self.interface} syncid {self.syncid}{extra}"


# --- operations -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AddService:
    """Create a virtual service."""

    key: ServiceKey
    settings: ServiceSettings


@dataclass(frozen=True, slots=True)
class EditService:
    """Change a virtual service's settings in place."""

    key: ServiceKey
    settings: ServiceSettings


@dataclass(frozen=True, slots=True)
class DelService:
    """Remove a virtual service and all its real servers."""

    key: ServiceKey


@dataclass(frozen=True, slots=True)
class AddDest:
    """Add a real server to a service."""

    service: ServiceKey
    key: DestKey
    settings: DestSettings


@dataclass(frozen=True, slots=True)
class EditDest:
    """Change a real server's settings in place (the kernel's SET, never delete+add)."""

    service: ServiceKey
    key: DestKey
    settings: DestSettings


@dataclass(frozen=True, slots=True)
class DelDest:
    """Remove a real server from a service."""

    service: ServiceKey
    key: DestKey


Op = AddService | EditService | DelService | AddDest | EditDest | DelDest


class IPVSError(Exception):
    """A kernel request failed; ``errno`` is the kernel's error number."""

    def __init__(self, op: object, err: int):
        self.op = op
        self.errno = err
        super().__init__(f"{describe(op)}: {errno.errorcode.get(err, err)} ({os.strerror(err)})")


class IPVSBackend(Protocol):
    """The only door to the kernel's IPVS table.

    ``execute`` sends operations pipelined and returns one errno per operation
    (0 = done), in order; it never raises for a per-operation kernel error, so
    the reconciler can decide what a race (EEXIST, ENOENT) means.
    """

    async def dump(self, counters: bool = False) -> Table:
        """Read every service and real server from the kernel."""

    async def execute(self, ops: Sequence[Op]) -> list[int]:
        """Apply operations in order; return the errno of each (0 = success)."""

    async def get_timeouts(self) -> Timeouts:
        """Read the tcp/tcpfin/udp connection timeouts."""

    async def set_timeouts(self, timeouts: Timeouts) -> None:
        """Set connection timeouts; 0 fields stay unchanged."""

    async def daemons(self) -> list[SyncDaemon]:
        """The running connection-sync daemons (none, master, backup or both)."""

    async def start_daemon(self, daemon: SyncDaemon) -> None:
        """Start a sync daemon; IPVSError with the kernel's errno (EEXIST: one of that state runs)."""

    async def stop_daemon(self, state: str) -> None:
        """Stop the master or backup sync daemon; IPVSError (ESRCH) when none runs."""

    async def close(self) -> None:
        """Release the kernel socket."""


def hostport(addr: str, port: int) -> str:
    """``a:p`` for IPv4, ``[a]:p`` for IPv6, as ipvsadm prints them."""
    if ":" in addr:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


def family_of(addr: str) -> int:
    """socket.AF_INET or AF_INET6 for an address string."""
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def describe(op: object) -> str:
    """One line an operator understands: ``add dest TCP 192.0.2.33:25 -> 198.51.100.20:25 tun w1``."""
    match op:
        case AddService(key, s) | EditService(key, s):
            verb = "add" if isinstance(op, AddService) else "edit"
            extra = f" persistent {s.timeout}" if s.persistent else ""
            return f"{verb} service {key} {s.scheduler}{extra}"
        case DelService(key):
            return f"delete service {key}"
        case AddDest(svc, key, s) | EditDest(svc, key, s):
            verb = "add" if isinstance(op, AddDest) else "edit"
            return f"{verb} dest {svc} -> {key} {s.forwarding} weight {s.weight}"
        case DelDest(svc, key):
            return f"delete dest {svc} -> {key}"
        case SyncDaemon():
            return f"start {op}"
        case str() if op in SYNC_STATES:
            return f"stop {op} sync daemon"
    return repr(op)

