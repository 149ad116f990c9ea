"""The cluster file's keys: one table that the loader enforces and the documentation is made from.

Each mapping of the file is a ``Section`` listing the keys it accepts, in the
order they are documented, each with its type, default and meaning. The
validators take their allowed keys from here (``names``), so a key cannot be
accepted without being documented, and ``lvsmail.manpage`` writes
lvsmail-cluster(5) and docs/cluster-file.md from the same table, so the
reference cannot drift from what the loader does. Which check types take which
``check:`` key is recorded here too (``Key.types``).

This module holds data only: it imports nothing from the validators, which
import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvsmail.spec import AVAILABILITY_MODES, CHECK_TYPES, IMAP_SERVERS, SCHEDULERS, STORAGE_TYPES, SYNC_ROLES

# Check types grouped as the checkers speak (``on``/``off`` never connect).
_PROBING = tuple(t for t in CHECK_TYPES if t not in ("on", "off"))
_SMTP = ("smtp", "submission", "smtps")
_IMAP = ("imap", "imaps")
_POP3 = ("pop3", "pop3s")
_HTTP = ("http", "https")
_STARTTLS = _SMTP + _IMAP + _POP3  # the types that take ``tls:``
_VERIFY = _STARTTLS + ("https",)  # the types that can verify a certificate


@dataclass(frozen=True)
class Key:
    """One key of a mapping: its name, the kind of value, its default and a one-line meaning."""

    name: str
    type: str
    default: str
    doc: str
    #: Check keys only: the check types that accept the key (empty elsewhere).
    types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """One mapping of the cluster file: where it sits, what it is for, and the keys it accepts."""

    path: str
    title: str
    doc: str
    keys: tuple[Key, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The accepted keys, in documented order."""
        return tuple(key.name for key in self.keys)


SECTIONS: tuple[Section, ...] = (
    Section("", "Top level", "The whole file: the cluster's name, its addresses, its services and one optional "
            "section per part of lvsmail.", (
                Key("cluster", "name", "required",
                    "Name of the cluster, used in logs, status and file names (letters, digits, '.', '_', '-')."),
                Key("vips", "list of addresses", "[]",
                    "Addresses the director pair owns; every service's vip must be one of them."),
                Key("timeouts", "mapping", "the kernel's",
                    "IPVS connection timeouts (ipvsadm --set); see timeouts."),
                Key("maintenance_dir", "absolute path", "none",
                    "A file named after a real server (address, address:port or name) here forces it down "
                    "(ldirectord's maintenancedir)."),
                Key("alerts", "mapping", "none", "Announce health transitions by mail and/or webhook; see alerts."),
                Key("services", "list of mappings", "required",
                    "The virtual services, each with its real servers and health check; see services[]."),
                Key("sync", "mapping", "none", "The IPVS connection-synchronisation daemon; see sync."),
                Key("kernel", "mapping", "none (kernel: alone takes every default)",
                    "IPVS sysctls the director keeps at the given values; see kernel."),
                Key("registration", "mapping", "none",
                    "The directors' signed member API for real servers not listed in the file; see registration."),
                Key("mail", "mapping", "none",
                    "The mail stack realserver join sets up on every real server; see mail."),
                Key("realserver", "mapping", "none",
                    "Network facts realserver join cannot work out from the services; see realserver."),
                Key("failover", "mapping", "none", "The director pair's VRRPv3 instances; see failover."),
                Key("availability", "mapping", "none",
                    "Inputs of the availability report (lvsmail availability); see availability."),
                Key("metrics", "mapping", "none (no endpoint)",
                    "The director's Prometheus endpoint; see metrics."),
            )),
    Section("timeouts", "timeouts", "IPVS connection timeouts in seconds, as ipvsadm --set takes them; "
            "a key left out keeps the kernel's value.", (
                Key("tcp", "integer >= 1", "the kernel's", "Idle timeout of established TCP connections."),
                Key("tcpfin", "integer >= 1", "the kernel's", "Timeout of TCP connections after a FIN."),
                Key("udp", "integer >= 1", "the kernel's", "Timeout of UDP connection entries."),
            )),
    Section("alerts", "alerts", "Mail (ldirectord's emailalert) and webhook announcements of real-server "
            "transitions; give email addresses, a webhook, or both.", (
                Key("email", "address or list of addresses", "none", "Recipients of an alert mail per transition."),
                Key("email_from", "mail address", "lvsmail@localhost", "Sender of the alert mails."),
                Key("smtp", "host or host:port", "localhost:25", "The relay that takes the alert mails."),
                Key("repeat", "integer seconds >= 0", "0 (only on transitions)",
                    "Re-send while a server stays down, this often (ldirectord's emailalertfreq)."),
                Key("webhook", "http(s) URL", "none", "Receives a JSON POST per transition."),
            )),
    Section("services[]", "services[]", "One virtual service: either vip, protocol and port, or a firewall "
            "mark (fwmark, family).", (
                Key("name", "name", "required", "Unique name of the service (status, drain, track_services)."),
                Key("vip", "address", "required unless fwmark", "The virtual address; must be listed in vips."),
                Key("protocol", "tcp | udp", "tcp", "Transport protocol of the virtual service."),
                Key("port", "integer 1..65535", "required with vip", "Port of the virtual service."),
                Key("fwmark", "integer 1..4294967295", "none",
                    "A firewall-mark service instead of vip/protocol/port."),
                Key("family", "inet | inet6", "inet", "Address family of a fwmark service (only with fwmark)."),
                Key("scheduler", " | ".join(SCHEDULERS), "wlc", "IPVS scheduling algorithm."),
                Key("persistent", "integer seconds >= 0", "0 (off)",
                    "Persistence timeout: a client sticks to one real server this long."),
                Key("netmask", "IPv4 dotted mask or IPv6 prefix length", "host (/32, /128)",
                    "Persistence granularity (needs persistent)."),
                Key("forwarding", "dr | tun | nat (also gate, ipip, masq)", "dr",
                    "Forwarding method of the real servers (ldirectord's names are accepted)."),
                Key("quiescent", "boolean", "false",
                    "On failure set weight 0 (drain) instead of removing the real server."),
                Key("fallback", "real server", "none",
                    "The 'sorry server' installed when every real server is down."),
                Key("realservers", "list of real servers", "[]",
                    "The pool: addr, addr:port, [v6]:port or a mapping; see services[].realservers[]."),
                Key("check", "mapping", "none (not checked)",
                    "Health check of each real server; see services[].check."),
            )),
    Section("services[].realservers[]", "services[].realservers[] and services[].fallback",
            "A real server written as a mapping (the shorthand addr, addr:port or [v6]:port sets only "
            "address and port).", (
                Key("address", "address", "required", "The real server's address (never a host name)."),
                Key("port", "integer 1..65535", "the service's port (0 for fwmark)",
                    "Destination port; only nat can change it."),
                Key("weight", "integer 0..65535", "1", "Scheduling weight; 0 takes no new connections."),
                Key("forwarding", "dr | tun | nat", "the service's", "Forwarding method for this real server."),
                Key("name", "name", "none", "A label for status, the dashboard, drain and maintenance files."),
            )),
    Section("services[].check", "services[].check", "How the director probes each real server. Which keys "
            "apply depends on type; a key the chosen type would ignore is an error.", (
                Key("type", " | ".join(CHECK_TYPES), "required",
                    "The protocol spoken; off: always down, on: always up.", CHECK_TYPES),
                Key("interval", "seconds > 0", "2", "Time between checks of one real server.", _PROBING),
                Key("timeout", "seconds > 0", "5", "Time one check may take.", _PROBING),
                Key("rise", "integer >= 1", "1", "Consecutive successes that bring a server up.", _PROBING),
                Key("fall", "integer >= 1", "1",
                    "Consecutive failures that take a server down (ldirectord's failurecount).", _PROBING),
                Key("start", "up | down", "up", "State of a real server before its first check.", _PROBING),
                Key("port", "integer 1..65535", "the real server's port", "Port to probe.", _PROBING),
                Key("via", "direct | vip", "direct",
                    "vip: probe through the VIP with a socket mark (dr and tun, IPv4).", _PROBING),
                Key("helo", "host name", "this director's host name", "EHLO name of SMTP checks.", _SMTP),
                Key("credentials", "absolute path", "none",
                    "Root-only file with the login for AUTH or LOGIN (never the secret itself).",
                    _SMTP + _IMAP + _POP3),
                Key("mailbox", "string", "INBOX", "Mailbox an IMAP check selects after login.", _IMAP),
                Key("path", "path starting with /", "/", "Request path of HTTP checks.", _HTTP),
                Key("host", "host name", "the real server's address",
                    "Host header (and the name verified for https).", _HTTP),
                Key("method", "GET | HEAD | POST", "GET", "HTTP request method.", _HTTP),
                Key("status", "integer 100..599", "200", "Expected HTTP status code.", _HTTP),
                Key("receive", "string", "none", "Text the response body must contain.", _HTTP),
                Key("receive_regex", "boolean", "false", "Match receive as a regular expression.", _HTTP),
                Key("tls", "none | starttls | implicit", "starttls for submission, implicit for smtps imaps "
                    "pop3s, else none", "How the check speaks TLS (the choices depend on the type).", _STARTTLS),
                Key("verify", "boolean", "true", "Verify the certificate chain (and the name, when known).",
                    _VERIFY),
                Key("ca_file", "absolute path", "the system's trust store",
                    "CA bundle that verifies the real servers' certificates.", _VERIFY),
                Key("server_name", "host name", "none (https: host)", "Name sent in SNI and verified.", _VERIFY),
                Key("command", "command line", "required for external",
                    "Program (absolute path) and arguments of an external check; exit 0 means up.",
                    ("external",)),
            )),
    Section("sync", "sync", "The IPVS connection-synchronisation daemon (ipvsadm --start-daemon), so a "
            "takeover keeps established sessions.", (
                Key("interface", "interface name", "required",
                    "Where the sync multicast goes (a link both directors share)."),
                Key("syncid", "integer 0..255", "0", "A backup only accepts messages with its own ID."),
                Key("maxlen", "integer bytes", "from the interface MTU", "UDP payload size of sync messages."),
                Key("group", "multicast address", "the kernel's (224.0.0.81)", "Multicast group of the messages."),
                Key("port", "integer 1..65535", "the kernel's (8848)", "UDP port of the messages."),
                Key("ttl", "integer 1..255", "the kernel's (1)", "Multicast TTL."),
                Key("role", " | ".join(SYNC_ROLES), "auto",
                    "auto follows the failover instance marked sync: true (master without failover)."),
            )),
    Section("kernel", "kernel", "IPVS sysctls (net.ipv4.vs.* unless noted) the director sets at start and on "
            "every reload. Each takes an integer, unmanaged (leave it alone) or, where noted, auto.", (
                Key("expire_nodest_conn", "0 | 1 | unmanaged", "1",
                    "Reset connections of a removed real server at their next packet, so clients reconnect."),
                Key("expire_quiescent_template", "0 | 1 | unmanaged", "1",
                    "Expire persistence templates of a weight-0 server, so persistent clients move."),
                Key("conn_reuse_mode", "0..3 | unmanaged", "unmanaged (kernel: 1)",
                    "How a connection reusing an old address/port pair is scheduled (a bitmap of 1 and 2)."),
                Key("backup_only", "0 | 1 | auto | unmanaged", "auto",
                    "auto: 1 when sync.role is backup, else not managed."),
                Key("ip_forward", "0 | 1 | auto | unmanaged", "auto",
                    "net.ipv4.ip_forward; auto: 1 when a service or real server uses nat, else not managed."),
            )),
    Section("registration", "registration", "The directors' signed HTTP member API: real servers not listed "
            "in the file join and leave through it. Read by directors and real servers alike.", (
                Key("listen", "address:port or list", "none (no API)",
                    "Where a director serves the API; each director of a pair binds its own."),
                Key("directors", "list of [http(s)://]address:port", "[]", "The API endpoints real servers contact."),
                Key("token_file", "absolute path", "required",
                    "Root-only key file: secret=... on directors, member=/key= or secret= on real servers."),
                Key("allowed_networks", "list of networks", "required with listen",
                    "Member addresses must lie inside one of these."),
                Key("max_skew", "seconds, at most 3600", "30", "Clock difference accepted in a signed request."),
                Key("max_body", "integer 256..1048576", "4096", "Larger request bodies are refused unread."),
                Key("drain_timeout", "seconds > 0", "300", "How long leave waits for active connections to end."),
                Key("tls_cert", "absolute path", "none",
                    "Director: certificate chain; with tls_key the API speaks HTTPS."),
                Key("tls_key", "absolute path", "none", "Director: private key of tls_cert."),
                Key("tls_ca", "absolute path", "none", "Real server: CA that signed the directors' certificates."),
                Key("members_file", "absolute path", "in the state directory",
                    "Director: where joined members are kept (put it under /var/lib to survive a reboot)."),
            )),
    Section("mail", "mail", "The mail stack realserver join sets up identically on every real server "
            "(Postfix, and Dovecot or Courier-IMAP).", (
                Key("hostname", "FQDN", "required", "Postfix myhostname: every real server greets with this name."),
                Key("domain", "FQDN", "required", "Postfix mydomain."),
                Key("destinations", "list of domains, $parameters or type:table", "[$myhostname, localhost]",
                    "Postfix mydestination."),
                Key("mynetworks", "list of networks", "[]",
                    "Postfix mynetworks besides loopback (and the directors under nat)."),
                Key("mailbox", "mapping", "layout: home", "Where mailboxes live; see mail.mailbox."),
                Key("storage", "mapping", "none", "The shared mailbox storage; see mail.storage."),
                Key("imap", " | ".join(IMAP_SERVERS), "dovecot", "The IMAP server configured."),
                Key("max_daemons", "integer 1..100000", "40", "Courier MAXDAEMONS; Dovecot's imap process_limit."),
                Key("tls", "mapping", "none", "Certificate and key for Postfix and the IMAP server; see mail.tls."),
                Key("health_page", "mapping", "none", "The page the HTTP check fetches; see mail.health_page."),
            )),
    Section("mail.mailbox", "mail.mailbox", "Layout of the mailboxes.", (
        Key("layout", "home | virtual", "home",
            "home: Maildir/ in each user's home; virtual: Postfix virtual mailboxes."),
        Key("root", "absolute path", "none (required for virtual)",
            "virtual_mailbox_base (virtual) or where the homes live; must be on the shared storage."),
        Key("maps", "Postfix table type:name", "none (required for virtual)", "virtual_mailbox_maps (virtual only)."),
        Key("owner", "user name", "vmail", "User that owns every virtual mailbox (virtual only)."),
    )),
    Section("mail.storage", "mail.storage", "The shared storage every real server reads the same mailboxes "
            "from; join checks it.", (
                Key("path", "absolute path", "required", "Mount point of the shared storage."),
                Key("type", " | ".join(STORAGE_TYPES), "local", "File system /proc/self/mountinfo must show there."),
                Key("require_network", "boolean", "false", "Refuse to join unless path is a network file system."),
            )),
    Section("mail.tls", "mail.tls", "TLS files of the mail daemons; both are required.", (
        Key("cert", "absolute path", "required", "Certificate chain (PEM)."),
        Key("key", "absolute path", "required", "Private key (PEM)."),
    )),
    Section("mail.health_page", "mail.health_page", "The static page an HTTP check fetches from each real server.", (
        Key("path", "absolute path", "/var/www/html/solicitud.html", "Where join writes the page."),
        Key("text", "one line of plain text", "test page", "The page's content, which the check expects."),
    )),
    Section("realserver", "realserver", "Network facts a real server cannot work out from the services.", (
        Key("interface", "interface name", "the interface holding the joining address",
            "Interface facing the directors."),
        Key("nat_gateway", "address", "none", "nat: the directors' inside (floating) address, the default route."),
        Key("directors", "list of addresses", "[]",
            "The directors' own addresses on the real servers' LAN (DR ARP check, nat mynetworks)."),
        Key("services", "list of service names", "[]",
            "What a real server not listed in the file joins through registration."),
        Key("state_file", "absolute path", "/var/lib/lvsmail/realserver.json", "Where join records what it changed."),
    )),
    Section("failover", "failover", "The director pair's VRRPv3 (RFC 5798) virtual routers; the files of a "
            "pair differ only in the priorities.", (
                Key("interface", "interface name", "none", "Default interface of every instance."),
                Key("instances", "list of mappings", "required",
                    "One VRRP instance per VIP group; see failover.instances[]."),
            )),
    Section("failover.instances[]", "failover.instances[]", "One virtual router (one VRID on one interface) "
            "with the VIPs it moves and the resources that move with them.", (
                Key("name", "name", "required", "Name of the instance (logs, status, notify arguments)."),
                Key("vrid", "integer 1..255", "required", "Virtual router ID, unique per interface and family."),
                Key("priority", "integer 1..255", "100",
                    "Election priority; 255 only on the director that owns the addresses."),
                Key("advert_interval", "seconds 0.01..40.95", "1", "Time between adverts, in steps of 0.01."),
                Key("preempt", "boolean", "true", "A higher priority takes the VIPs back."),
                Key("preempt_delay", "seconds >= 0", "0",
                    "How long a lower-priority master is tolerated after we first see it."),
                Key("interface", "interface name", "failover.interface", "Interface the adverts and VIPs use."),
                Key("vips", "list of address[/prefix]", "required", "The addresses moved; one family per instance."),
                Key("unicast_peers", "list of addresses", "[] (multicast)",
                    "Send adverts to these instead of 224.0.0.18 / ff02::12."),
                Key("auth_key_file", "absolute path", "none",
                    "Root-only key: HMAC-signed adverts, between lvsmail directors only."),
                Key("garp", "mapping", "count 3, interval 0.1, refresh 5",
                    "Announcements after taking the VIPs; see garp."),
                Key("track_interfaces", "list of names or {name, weight}", "[]",
                    "Interfaces that must be up; without weight a failure means fault."),
                Key("track_services", "list of names or {name, weight}", "[]",
                    "Services that must have a real server up; without weight a failure means fault."),
                Key("notify", "mapping", "none", "Commands run on each change of role; see notify."),
                Key("on_master", "list of commands", "[]", "Run in order after the VIPs are up."),
                Key("on_backup", "list of commands", "[]", "Run when the VIPs are released."),
                Key("sync", "boolean", "false", "This instance also moves the IPVS sync daemon's master role."),
            )),
    Section("failover.instances[].garp", "failover.instances[].garp", "Gratuitous ARP / unsolicited neighbour "
            "advertisements after taking the VIPs.", (
                Key("count", "integer 1..100", "3", "How many announcements."),
                Key("interval", "seconds > 0", "0.1", "Time between them."),
                Key("refresh", "seconds >= 0", "5", "A second set this long after the first (keepalived's "
                    "garp_master_delay), in case a peer that was master for a moment announced after us; 0: none."),
            )),
    Section("failover.instances[].track_interfaces[]", "failover.instances[].track_interfaces[] and "
            "track_services[]", "A tracked interface or service written as a mapping.", (
                Key("name", "name", "required", "The interface or service."),
                Key("weight", "integer 0..254", "0 (fault)",
                    "Lower the priority by this much when it fails, instead of fault."),
            )),
    Section("failover.instances[].notify", "failover.instances[].notify", "keepalived-style notify commands: "
            "absolute path, no shell; INSTANCE name, role and priority are appended.", (
                Key("master", "command", "none", "Run on becoming master."),
                Key("backup", "command", "none", "Run on becoming backup."),
                Key("fault", "command", "none", "Run on entering fault."),
            )),
    Section("availability", "availability", "Inputs of lvsmail availability (the seed deployment's model); "
            "every key is required.", (
                Key("node_availability", "fraction 0..1", "required", "Availability a of one node."),
                Key("mtbf_hours", "hours > 0", "required", "Mean time between failures of one node."),
                Key("layers", "mapping of name to layer", "required", "The layers; see availability.layers.NAME."),
            )),
    Section("availability.layers.NAME", "availability.layers.NAME", "One layer of the availability model.", (
        Key("nodes", "integer 1..10000", "required", "How many nodes."),
        Key("mode", " | ".join(AVAILABILITY_MODES), "required",
            "How they share the work (active-active also accepted)."),
        Key("node_availability", "fraction 0..1", "the section's", "This layer's node availability."),
        Key("mtbf_hours", "hours > 0", "the section's", "This layer's MTBF."),
        Key("mtfo_seconds", "seconds > 0", "measured by the directors",
            "Failover time, for layers lvsmail does not watch (shared storage)."),
    )),
    Section("metrics", "metrics", "The director's Prometheus endpoint; metrics: alone turns it on with the "
            "defaults. It has no authentication.", (
                Key("listen", "address:port or [v6]:port", "127.0.0.1:9712", "Where the endpoint listens."),
            )),
)

#: Sections by path.
BY_PATH: dict[str, Section] = {section.path: section for section in SECTIONS}


def names(path: str) -> tuple[str, ...]:
    """The keys the mapping at ``path`` accepts (KeyError for a path the table does not know)."""
    return BY_PATH[path].names
