"""Validated, immutable description of a cluster: what the director must make true.

A ``*Spec`` is produced only by the cluster-file loader (or an importer), after
every field has been checked, so code that receives one never re-validates it.
Addresses are kept as normalised strings (``ipaddress`` compressed form) so specs
compare, hash and print the way an administrator wrote them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

#: IPVS schedulers shipped with the Linux kernel (net/netfilter/ipvs/ip_vs_*.c).
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")

#: Forwarding methods, in ipvsadm's order of description (-g, -i, -m).
FORWARDING = ("dr", "tun", "nat")

#: Names ldirectord and ipvsadm use for the same methods.
FORWARDING_ALIASES = {"gate": "dr", "ipip": "tun", "masq": "nat", "droute": "dr", "tunnel": "tun", "masquerade": "nat"}

#: Health-check types; ``off`` never checks (server always down), ``on`` always up.
CHECK_TYPES = (
    "connect", "smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s",
    "http", "https", "external", "off", "on",
)


@dataclass(frozen=True)
class CheckSpec:
    """How one service's real servers are health-checked (used by the health checker)."""

    type: str
    interval: float = 2.0
    timeout: float = 5.0
    rise: int = 1
    fall: int = 1
    start: str = "up"
    port: int | None = None
    via: str = "direct"
    # protocol dialogue
    helo: str | None = None
    tls: str = "none"  # none | starttls | implicit
    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None
    credentials: str | None = None  # path of a root-only file, never the secret itself
    mailbox: str = "INBOX"
    # http(s)
    path: str = "/"
    host: str | None = None
    method: str = "GET"
    status: int = 200
    receive: str | None = None
    receive_regex: bool = False
    # external
    command: str | None = None


@dataclass(frozen=True)
class RealServerSpec:
    """One real server of a virtual service."""

    address: str
    port: int
    weight: int = 1
    forwarding: str = "dr"
    name: str | None = None

    @property
    def label(self) -> str:
        """Operator-facing name: the configured name, else ``address:port``."""
        return self.name or _hostport(self.address, self.port)


@dataclass(frozen=True)
class ServiceSpec:
    """One IPVS virtual service: a VIP with protocol and port, or a firewall mark."""

    name: str
    family: str  # "inet" | "inet6"
    vip: str | None = None
    protocol: str | None = None  # "tcp" | "udp"; None for fwmark services
    port: int | None = None
    fwmark: int | None = None
    scheduler: str = "wlc"
    persistent: int = 0  # seconds; 0 = no persistence
    netmask: str = ""  # IPv4 dotted mask or IPv6 prefix length; "" = host (/32, /128)
    forwarding: str = "dr"
    quiescent: bool = False
    realservers: tuple[RealServerSpec, ...] = ()
    fallback: RealServerSpec | None = None
    check: CheckSpec | None = None

    @property
    def label(self) -> str:
        """How ipvsadm would name this service: ``TCP 192.0.2.33:25`` or ``FWM 1``."""
        if self.fwmark is not None:
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == "inet6" else "")
        return f"{self.protocol.upper()} {_hostport(self.vip, self.port)}"


@dataclass(frozen=True)
class TimeoutsSpec:
    """IPVS connection timeouts in seconds (``ipvsadm --set tcp tcpfin udp``); None keeps the kernel's."""

    tcp: int | None = None
    tcpfin: int | None = None
    udp: int | None = None


@dataclass(frozen=True)
class AlertsSpec:
    """Where health transitions are announced (ldirectord's emailalert, plus a webhook)."""

    email: tuple[str, ...] = ()
    email_from: str = "lvsmail@localhost"
    smtp_host: str = "localhost"  # the relay that takes the alert mail
    smtp_port: int = 25
    repeat: int = 0  # seconds between reminders while a server stays down; 0 = only on transitions
    webhook: str | None = None  # URL that receives a JSON POST per transition


@dataclass(frozen=True)
class ClusterSpec:
    """A whole cluster file, validated."""

    name: str
    vips: tuple[str, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    timeouts: TimeoutsSpec = field(default_factory=TimeoutsSpec)
    maintenance_dir: str | None = None  # a file named after a real server here forces it down
    alerts: AlertsSpec | None = None
    source: str = "<memory>"
    # Optional sections, each owned by one part of lvsmail (see the loader's SECTIONS).


def _hostport(address: str, port: int | None) -> str:
    """``a:p`` for IPv4, ``[a]:p`` for IPv6, as ipvsadm prints them."""
    if ipaddress.ip_address(address).version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"
