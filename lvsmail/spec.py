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
    metrics: MetricsSpec | None = None  # the Prometheus endpoint (off when absent)
    availability: AvailabilitySpec | None = None  # inputs of the availability report
    sync: SyncSpec | None = None
    kernel: KernelProfileSpec | None = None
    mail: MailSpec | None = None  # real servers' mail stack (realserver join)
    realserver: RealServerDefaultsSpec | None = None  # real servers' network defaults (realserver join)
    registration: RegistrationSpec | None = None
    failover: FailoverSpec | None = None  # director failover (VRRP)


def _hostport(address: str, port: int | None) -> str:
    """``a:p`` for IPv4, ``[a]:p`` for IPv6, as ipvsadm prints them."""
    if ipaddress.ip_address(address).version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


# -- registration API --

@dataclass(frozen=True)
class RegistrationSpec:
    """Where real servers register themselves with the directors, and what a director accepts."""

    token_file: str  # root-only file with the shared secret (or, on a member, its derived key)
    # "address:port" entries; a director binds those that are its own addresses (one file serves a pair);
    # () = no API
    listen: tuple[str, ...] = ()
    directors: tuple[str, ...] = ()  # base URLs the real servers contact, e.g. "http://198.51.100.1:8730"
    allowed_networks: tuple[str, ...] = ()  # CIDRs a member address must lie in
    max_skew: float = 30.0  # seconds a request's timestamp may differ from the director's clock
    max_body: int = 4096  # bytes; a larger request body is refused before it is read
    drain_timeout: float = 300.0  # seconds `leave` waits for active connections to reach 0
    tls_cert: str | None = None  # director: certificate chain (PEM); with tls_key the API speaks HTTPS
    tls_key: str | None = None
    tls_ca: str | None = None  # member: CA that signed the directors' certificates (https:// directors)
    members_file: str | None = None  # director: where joined members persist; None = in the state directory

    @property
    def listen_addresses(self) -> tuple[tuple[str, int], ...]:
        """(address, port) pairs the API may bind."""
        return tuple((host.strip("[]"), int(port)) for host, _, port in (e.rpartition(":") for e in self.listen))


# -- real servers' mail stack --

#: File systems the mailbox storage may be; all but ``local`` are shared between real servers.
STORAGE_TYPES = ("nfs", "nfs4", "lustre", "cephfs", "glusterfs", "local")
#: IMAP servers ``realserver join`` configures.
IMAP_SERVERS = ("dovecot", "courier")
#: Where Postfix delivers: users' homes (``home_mailbox``) or one virtual mailbox tree.
MAILBOX_LAYOUTS = ("home", "virtual")


@dataclass(frozen=True)
class StorageSpec:
    """The file system that holds the mailboxes, shared by every real server."""

    path: str
    type: str = "local"
    require_network: bool = False  # refuse to join unless ``path`` is on a network or cluster file system


@dataclass(frozen=True)
class MailboxSpec:
    """How mail is stored: Maildir in each user's home, or under one virtual mailbox base."""

    layout: str = "home"
    root: str | None = None  # virtual: Postfix's virtual_mailbox_base; home: where the homes live
    maps: str | None = None  # virtual: Postfix lookup table of mailboxes (virtual_mailbox_maps)
    owner: str = "vmail"  # virtual: the user that owns every mailbox (uid/gid of deliveries)


@dataclass(frozen=True)
class TlsFilesSpec:
    """Certificate chain and key (PEM files on each real server) for SMTP STARTTLS and IMAP."""

    cert: str
    key: str


@dataclass(frozen=True)
class HealthPageSpec:
    """The page the directors' HTTP check fetches (ldirectord's request/receive)."""

    path: str = "/var/www/html/solicitud.html"
    text: str = "test page"


@dataclass(frozen=True)
class MailSpec:
    """The mail stack every real server runs, identical on all of them."""

    hostname: str  # Postfix myhostname: every real server greets with this name
    domain: str
    destinations: tuple[str, ...] = ("$myhostname", "localhost")
    mynetworks: tuple[str, ...] = ()  # besides loopback (and the directors under NAT)
    mailbox: MailboxSpec = field(default_factory=MailboxSpec)
    storage: StorageSpec | None = None
    imap: str = "dovecot"
    max_daemons: int = 40  # Courier MAXDAEMONS; Dovecot's imap process_limit
    tls: TlsFilesSpec | None = None
    health_page: HealthPageSpec | None = None


@dataclass(frozen=True)
class RealServerDefaultsSpec:
    """How a real server reaches the directors: the facts ``realserver join`` cannot guess."""

    interface: str | None = None  # facing the director; None = the interface holding the joining address
    nat_gateway: str | None = None  # the directors' inside (floating) address, the NAT default route
    directors: tuple[str, ...] = ()  # the directors' own addresses on the real servers' LAN
    services: tuple[str, ...] = ()  # services a real server not listed in the file joins through registration
    state_file: str = "/var/lib/lvsmail/realserver.json"


# -- IPVS sync daemon and kernel profile --

#: Roles of the connection-sync daemon; ``auto`` follows the VRRP instance marked ``sync: true``.
SYNC_ROLES = ("auto", "master", "backup")


@dataclass(frozen=True)
class SyncSpec:
    """The IPVS connection-sync daemon of a director pair (``ipvsadm --start-daemon``).

    None in an optional field leaves the kernel's choice: group 224.0.0.81, port 8848,
    TTL 1, message size from the interface MTU.
    """

    interface: str
    syncid: int = 0
    maxlen: int | None = None
    group: str | None = None
    port: int | None = None
    ttl: int | None = None
    role: str = "auto"


@dataclass(frozen=True)
class KernelProfileSpec:
    """The sysctls a director sets and reports; None leaves a key to the administrator.

    ``backup_only`` and ``ip_forward`` default to "auto": 1 on a director whose sync
    role is fixed to backup, and 1 when NAT services exist, respectively.
    """

    expire_nodest_conn: int | None = 1
    expire_quiescent_template: int | None = 1
    conn_reuse_mode: int | None = None
    backup_only: int | str | None = "auto"
    ip_forward: int | str | None = "auto"


# -- director failover (VRRP) --

@dataclass(frozen=True)
class TrackSpec:
    """A tracked interface or service: when down, Fault (weight 0) or priority lowered by ``weight``."""

    name: str
    weight: int = 0


@dataclass(frozen=True)
class NotifySpec:
    """keepalived-style notify hooks, each an argv run with ``INSTANCE name STATE priority`` appended."""

    master: tuple[str, ...] | None = None
    backup: tuple[str, ...] | None = None
    fault: tuple[str, ...] | None = None


@dataclass(frozen=True)
class GarpSpec:
    """How often a new master announces its addresses (gratuitous ARP, unsolicited NA)."""

    count: int = 3
    interval: float = 0.1  # seconds between repeats
    # Seconds after the first set until a second set (keepalived's garp_master_delay, 5 s there too); 0 for none.
    # A peer that was master for a moment (a stalled director, a split brain healing) may announce after us, and
    # without a second set the hosts on the link keep its MAC address until their ARP entry expires.
    refresh: float = 5.0


@dataclass(frozen=True)
class VrrpInstanceSpec:
    """One VRRPv3 virtual router (RFC 5798) and the resource group it moves."""

    name: str
    vrid: int
    interface: str
    family: str  # "inet" | "inet6", from the VIPs
    vips: tuple[str, ...]  # address/prefixlen
    priority: int = 100
    advert_interval: float = 1.0  # seconds, centisecond resolution
    preempt: bool = True
    preempt_delay: float = 0.0
    unicast_peers: tuple[str, ...] = ()
    auth_key_file: str | None = None
    garp: GarpSpec = field(default_factory=GarpSpec)
    track_interfaces: tuple[TrackSpec, ...] = ()
    track_services: tuple[TrackSpec, ...] = ()
    notify: NotifySpec = field(default_factory=NotifySpec)
    on_master: tuple[tuple[str, ...], ...] = ()
    on_backup: tuple[tuple[str, ...], ...] = ()
    sync: bool = False


@dataclass(frozen=True)
class FailoverSpec:
    """The director's VRRP instances (the ``failover:`` section)."""

    instances: tuple[VrrpInstanceSpec, ...]
    interface: str | None = None


# -- availability model --

#: How the nodes of a layer share the work: one pair member serves while the other stands by,
#: or every node serves and a failed one only costs its clients a reconnect.
AVAILABILITY_MODES = ("active-passive", "all-active")


@dataclass(frozen=True)
class AvailabilityLayerSpec:
    """One redundant layer of the cluster (directors, real servers, storage) in the availability model."""

    name: str
    nodes: int
    mode: str  # one of AVAILABILITY_MODES
    node_availability: float | None = None  # None: the section's value
    mtbf_hours: float | None = None  # None: the section's value
    mtfo_seconds: float | None = None  # a failover time measured outside lvsmail (e.g. storage)


@dataclass(frozen=True)
class AvailabilitySpec:
    """Inputs of ``lvsmail availability``: node availability, MTBF and the layers (the seed's model)."""

    node_availability: float
    mtbf_hours: float
    layers: tuple[AvailabilityLayerSpec, ...]


# -- metrics endpoint --

#: Where the Prometheus endpoint listens when ``metrics:`` gives no address (the director itself only).
DEFAULT_METRICS_LISTEN = "127.0.0.1:9712"


@dataclass(frozen=True)
class MetricsSpec:
    """The director's Prometheus endpoint: ``address:port`` it listens on (absent section: no endpoint)."""

    listen: str = DEFAULT_METRICS_LISTEN
