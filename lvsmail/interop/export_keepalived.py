"""Writing one director's cluster file as a keepalived.conf for keepalived 2.2.7 (Debian 12).

The reverse of the keepalived importer: ``lvsmail config import-keepalived``
reads the output back to the same services, which is how both directions are
tested.  Every setting keepalived cannot express becomes a ``! lvsmail:``
comment where it would have gone and a warning returned to the caller, so
nothing is dropped without a word.  Strings are quoted the way keepalived's
parser reads them (lib/parser.c: ``"..."`` with no escapes for most keywords;
backslash escapes for ``regex``, ``misc_path`` and the notify scripts).
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass

from lvsmail.config.errors import ConfigError, Problem
from lvsmail.interop.keepalived_virtual import NAMES_BY_PORT
from lvsmail.spec import CheckSpec, ClusterSpec, RealServerSpec, ServiceSpec, VrrpInstanceSpec

__all__ = ["ExportResult", "ExportWriter", "export_keepalived", "regex_literal", "service_base_name"]

#: lvsmail forwarding methods in keepalived's words (lb_kind / lvs_method).
LB_KIND = {"dr": "DR", "tun": "TUN", "nat": "NAT"}
#: Checks keepalived 2.2.7 has no protocol dialogue for: TCP_CHECK only proves the port accepts connections.
TCP_ONLY = {"imap": "IMAP", "imaps": "IMAP over TLS", "pop3": "POP3", "pop3s": "POP3 over TLS",
            "smtps": "SMTP over TLS (RFC 8314)"}
#: Characters with a meaning in a regular expression (PCRE2, Perl and Python alike).
REGEX_CHARS = frozenset(".^$*+?{}[]\\|()")
_INDENT = "    "


@dataclass(frozen=True)
class ExportResult:
    """A generated configuration and what it could not carry, one message per setting."""

    text: str
    warnings: list[str]


def export_keepalived(spec: ClusterSpec, *, router_id: str | None = None) -> ExportResult:
    """keepalived.conf text for ``spec`` (one director's cluster file) and the warnings.

    ``router_id`` names the director in keepalived's mail alerts (default: the cluster name).
    Raises ConfigError when a value cannot be written so that keepalived reads it back
    unchanged (a double quote in a script argument, for example).
    """
    out = _Writer(spec.source)
    out.raw(f"! keepalived.conf for keepalived 2.2.7, written by `lvsmail config export-keepalived` from "
            f"{out.source_label}.")
    out.raw(f"! Cluster {spec.name}.  Read it back with: lvsmail config import-keepalived FILE")
    out.raw("! Lines starting '! lvsmail:' name settings keepalived cannot express (also printed as warnings).")
    out.raw("")
    sync_instance = _global_defs(out, spec, router_id or spec.name)
    if spec.failover is not None:
        for instance in spec.failover.instances:
            _vrrp_instance(out, instance, instance.name == sync_instance,
                           spec.failover.instances[0].garp.interval)
    bases: Counter[str] = Counter()
    for index, service in enumerate(spec.services):
        _virtual_server(out, service, f"services[{index}]", bases)
    _sections(out, spec)
    return out.result()


def service_base_name(service: ServiceSpec) -> str:
    """The name the keepalived importer gives this service (before its -2, -3 suffixes)."""
    if service.fwmark is not None:
        return f"fwmark-{service.fwmark}"
    if service.protocol == "tcp":
        return NAMES_BY_PORT.get(service.port, f"tcp-{service.port}")
    return f"{service.protocol}-{service.port}"


def regex_literal(text: str) -> str:
    """``text`` as a regular expression matching it literally (only the characters that need it escaped).

    Python's re.escape would also escape blanks, which would turn every plain text into a
    pattern on the way back.
    """
    return "".join("\\" + ch if ch in REGEX_CHARS else ch for ch in text)


def _num(value: float) -> str:
    """Seconds as keepalived and ldirectord read them: ``2``, ``0.1``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ExportWriter:
    """Lines of one export, its warnings, and the values that cannot be written (shared by both exporters).

    ``comment`` is the target's comment mark and ``target`` its file name, for the messages.
    """

    def __init__(self, source: str, comment: str, target: str):
        self.source = source
        self.comment = comment
        self.target = target
        self.lines: list[str] = []
        self.warnings: list[str] = []
        self.problems: list[Problem] = []

    def raw(self, text: str) -> None:
        """A line exactly as given."""
        self.lines.append(text)

    @property
    def source_label(self) -> str:
        """The source's name for a comment line: a control character (a line break in a file name) as '?'."""
        return "".join("?" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in self.source)

    def note_cannot(self, indent: str, path: str, why: str) -> None:
        """A setting the target cannot express: a comment in place and a warning."""
        self.lines.append(f"{indent}{self.comment} lvsmail: {path} not expressed: {why}")
        self.warnings.append(f"{self.source}: {path}: cannot be expressed in {self.target}: {why}")

    def note_changed(self, indent: str, path: str, why: str) -> None:
        """A setting written with a different meaning: a comment in place and a warning."""
        self.lines.append(f"{indent}{self.comment} lvsmail: {path}: {why}")
        self.warnings.append(f"{self.source}: {path}: written to {self.target} with a change: {why}")

    def refuse(self, path: str, why: str) -> None:
        """A value that would be read back differently: the export fails naming it."""
        self.problems.append(Problem(self.source, None, path, why))

    def result(self) -> ExportResult:
        """The text and warnings; ConfigError naming every value that could not be written."""
        if self.problems:
            raise ConfigError(self.problems)
        return ExportResult("\n".join(self.lines) + "\n", self.warnings)


class _Writer(ExportWriter):
    """keepalived.conf: blocks indented four spaces a level, ``!`` comments, and its three kinds of strings."""

    def __init__(self, source: str):
        super().__init__(source, "!", "keepalived.conf")

    def line(self, depth: int, text: str) -> None:
        """A line indented ``depth`` levels."""
        self.lines.append(_INDENT * depth + text)

    def cannot(self, depth: int, path: str, why: str) -> None:
        """A setting keepalived cannot express, noted at ``depth``."""
        self.note_cannot(_INDENT * depth, path, why)

    def changed(self, depth: int, path: str, why: str) -> None:
        """A setting written with a different meaning, noted at ``depth``."""
        self.note_changed(_INDENT * depth, path, why)

    def quoted(self, path: str, text: str) -> str:
        """``"text"`` for keywords read without escapes (path, helo_name, virtualhost)."""
        if '"' in text or any(ch in text for ch in "\n\r\0"):
            self.refuse(path, f"{text!r}: keepalived cannot read a double quote or line break here")
        return f'"{text}"'

    def escaped(self, path: str, text: str) -> str:
        """``"text"`` for keywords read with backslash escapes (regex)."""
        if any(ch in text for ch in "\n\r\0"):
            self.refuse(path, f"{text!r}: keepalived cannot read a line break here")
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def script(self, path: str, argv: list[str]) -> str:
        """A program and its arguments for notify/misc_path: words read twice (quotes, then words)."""
        words = []
        for word in argv:
            if any(ch in word for ch in "\"'\\\n\r\0"):
                self.refuse(path, f"{word!r}: keepalived cannot pass quotes, backslashes or line breaks "
                                  "in a script argument")
            words.append(f"'{word}'" if not word or any(ch.isspace() for ch in word) else word)
        return '"' + " ".join(words) + '"'


# -- global_defs and VRRP --------------------------------------------------------------------------------

def _global_defs(out: _Writer, spec: ClusterSpec, router_id: str) -> str | None:
    """router_id, VRRP version 3, the sync daemon, IPVS timeouts, mail alerts; the sync instance's name."""
    out.raw("global_defs {")
    out.line(1, f"router_id {out.quoted('router_id', router_id)}")
    if _uses_scripts(spec):
        # keepalived 2.2.7 flags root scripts without script security as a configuration error; with it,
        # it refuses a script that a non-root user could change.
        out.line(1, "enable_script_security")
        out.line(1, "script_user root")
    sync_instance = None
    if spec.failover is not None:
        out.line(1, "vrrp_version 3    ! RFC 5798, as lvsmail's failover")
        # keepalived spaces gratuitous ARP (IPv4) and unsolicited NA (IPv6) per interface: the first
        # instance's spacing is written for all.
        interval = _num(spec.failover.instances[0].garp.interval)
        out.line(1, f"vrrp_garp_interval {interval}")
        out.line(1, f"vrrp_gna_interval {interval}")
    if spec.sync is not None:
        sync_instance = _sync(out, spec)
    timeouts = [(k, getattr(spec.timeouts, k)) for k in ("tcp", "tcpfin", "udp")]
    if any(v is not None for _k, v in timeouts):
        out.line(1, "lvs_timeouts " + " ".join(f"{k} {v}" for k, v in timeouts if v is not None))
    if spec.alerts is not None:
        _alerts(out, spec)
    out.raw("}")
    out.raw("")
    return sync_instance


def _uses_scripts(spec: ClusterSpec) -> bool:
    """True when the output runs programs: notify hooks or MISC_CHECK (external and off checks)."""
    instances = spec.failover.instances if spec.failover is not None else ()
    hooks = any(i.notify.master or i.notify.backup or i.notify.fault or i.on_master or i.on_backup
                for i in instances)
    return hooks or any(s.check is not None and s.check.type in ("external", "off") for s in spec.services)


def _sync(out: _Writer, spec: ClusterSpec) -> str | None:
    """``lvs_sync_daemon IFACE INSTANCE id N ...``: keepalived runs master or backup with the instance's state."""
    sync = spec.sync
    instances = spec.failover.instances if spec.failover is not None else ()
    chosen = next((i for i in instances if i.sync), instances[0] if instances else None)
    if chosen is None:
        out.cannot(1, "sync", "keepalived runs the sync daemon only following a vrrp_instance, and this file "
                              "has no failover: section; start it with ipvsadm --start-daemon instead")
        return None
    if not any(i.sync for i in instances):
        out.changed(1, "sync", f"no instance is marked sync: true; the daemon follows instance {chosen.name!r}")
    if sync.role != "auto":
        out.cannot(1, "sync.role", f"{sync.role}: keepalived's sync daemon follows the instance's state "
                                   "(master while it is master)")
    words = [f"lvs_sync_daemon {sync.interface} {chosen.name} id {sync.syncid}"]
    for key in ("maxlen", "port", "ttl", "group"):
        if getattr(sync, key) is not None:
            words.append(f"{key} {getattr(sync, key)}")
    out.line(1, " ".join(words))
    return chosen.name


def _alerts(out: _Writer, spec: ClusterSpec) -> None:
    """Mail alerts: notification_email and smtp_alert (every checker's transitions are mailed)."""
    alerts = spec.alerts
    if alerts.email:
        out.line(1, "notification_email {")
        for address in alerts.email:
            out.line(2, out.quoted("alerts.email", address))
        out.line(1, "}")
        out.line(1, f"notification_email_from {out.quoted('alerts.email_from', alerts.email_from)}")
        out.line(1, f"smtp_server {alerts.smtp_host} {alerts.smtp_port}")
        out.line(1, "smtp_alert")
    if alerts.repeat:
        out.cannot(1, "alerts.repeat", "keepalived mails each transition once, without reminders")
    if alerts.webhook:
        out.cannot(1, "alerts.webhook", "keepalived has no webhook; a notify script could post it")


def _vrrp_instance(out: _Writer, vi: VrrpInstanceSpec, sync: bool, garp_interval: float) -> None:
    """One VRRPv3 instance; keepalived elects the master, so every director starts as BACKUP."""
    path = f"failover.instances[{vi.name}]"
    out.raw(f"vrrp_instance {vi.name} {{")
    out.line(1, "state BACKUP")
    out.line(1, f"interface {vi.interface}")
    out.line(1, f"virtual_router_id {vi.vrid}")
    out.line(1, f"priority {vi.priority}")
    out.line(1, f"advert_int {_num(vi.advert_interval)}")
    if not vi.preempt:
        out.line(1, "nopreempt")
    elif vi.preempt_delay:
        out.line(1, f"preempt_delay {_num(vi.preempt_delay)}")
    out.line(1, f"garp_master_repeat {vi.garp.count}")
    out.line(1, f"garp_master_delay {_num(vi.garp.refresh)}")
    if vi.garp.interval != garp_interval:
        out.cannot(1, f"{path}.garp.interval", f"{_num(vi.garp.interval)}: keepalived spaces gratuitous ARP/NA per "
                                               f"interface, not per instance; {_num(garp_interval)} s is written")
    if vi.unicast_peers:
        out.line(1, "unicast_peer {")
        for peer in vi.unicast_peers:
            out.line(2, peer)
        out.line(1, "}")
    out.line(1, "virtual_ipaddress {")
    for vip in vi.vips:
        out.line(2, vip)
    out.line(1, "}")
    if vi.track_interfaces:
        out.line(1, "track_interface {")
        for track in vi.track_interfaces:
            # keepalived: no weight = fault while down; a negative weight lowers the priority.
            out.line(2, track.name if track.weight == 0 else f"{track.name} weight -{track.weight}")
        out.line(1, "}")
    if vi.track_services:
        out.cannot(1, f"{path}.track_services", f"{', '.join(t.name for t in vi.track_services)}: keepalived's VRRP "
                                                "does not follow its own virtual servers; a vrrp_script could")
    if vi.auth_key_file:
        out.cannot(1, f"{path}.auth_key_file", "lvsmail's HMAC authentication has no keepalived equivalent "
                                               "(VRRPv3 has no authentication, RFC 5798 section 9)")
    _notify(out, vi, path)
    if sync:
        out.line(1, "! this instance's state drives lvs_sync_daemon (global_defs)")
    out.raw("}")
    out.raw("")


def _notify(out: _Writer, vi: VrrpInstanceSpec, path: str) -> None:
    """notify hooks: one ``notify`` script gets keepalived's INSTANCE name STATE priority, as lvsmail's do."""
    hooks = {"master": vi.notify.master, "backup": vi.notify.backup, "fault": vi.notify.fault}
    given = {state: argv for state, argv in hooks.items() if argv}
    per_state: dict[str, list[tuple[tuple[str, ...], str]]] = {state: [] for state in hooks}
    if len(given) == 3 and len(set(given.values())) == 1:
        out.line(1, f"notify {out.script(f'{path}.notify', list(given['master']))}")
    else:
        for state, argv in given.items():
            per_state[state].append((argv, f"{path}.notify.{state}"))
    for state, commands in (("master", vi.on_master), ("backup", vi.on_backup)):
        for index, argv in enumerate(commands):
            per_state[state].append((argv, f"{path}.on_{state}[{index}]"))
    for state, entries in per_state.items():
        for position, (argv, where) in enumerate(entries):
            if position:
                out.cannot(1, where, f"keepalived runs one notify_{state} script; {entries[0][1]} is written")
                continue
            if ".notify." in where:
                out.changed(1, where, f"written as notify_{state}, which keepalived runs without the "
                                      "INSTANCE name STATE priority arguments")
            out.line(1, f"notify_{state} {out.script(where, list(argv))}")


# -- virtual servers -------------------------------------------------------------------------------------

def _virtual_server(out: _Writer, s: ServiceSpec, path: str, bases: Counter[str]) -> None:
    """One service as a virtual_server block with its real servers and their checkers."""
    base = service_base_name(s)
    bases[base] += 1
    imported_name = base if bases[base] == 1 else f"{base}-{bases[base]}"
    out.raw(f"! service {s.name}")
    if s.name != imported_name:
        out.warnings.append(f"{out.source}: {path}.name: keepalived has no service names: {s.name!r} is kept as "
                            f"a comment and reads back as {imported_name!r}")
    if s.fwmark is not None:
        out.raw(f"virtual_server fwmark {s.fwmark} {{")
        if s.family == "inet6":
            out.line(1, "ip_family inet6")
    else:
        out.raw(f"virtual_server {s.vip} {s.port} {{")
    if s.check is not None and s.check.type not in ("on",):
        out.line(1, f"delay_loop {_num(s.check.interval)}")
    out.line(1, f"lb_algo {s.scheduler}")
    out.line(1, f"lb_kind {LB_KIND[s.forwarding]}")
    if s.persistent:
        out.line(1, f"persistence_timeout {s.persistent}")
        if s.netmask:
            out.line(1, f"persistence_granularity {s.netmask}")
    if s.fwmark is None:
        out.line(1, f"protocol {s.protocol.upper()}")
    if s.fallback is not None:
        # keepalived installs the sorry server when fewer than quorum (default 1) real servers are up,
        # which is lvsmail's fallback rule.
        out.line(1, f"sorry_server {_real_target(s.fallback, s)}")
        if s.fallback.forwarding != s.forwarding:
            out.line(1, f"sorry_server_lvs_method {LB_KIND[s.fallback.forwarding]}")
        if s.fallback.name:
            out.line(1, f"! sorry server {s.fallback.name}")
    ported = [rs for rs in (*s.realservers, *([s.fallback] if s.fallback else ())) if rs.port]
    if s.fwmark is not None and ported:
        out.changed(1, f"{path}.realservers", f"ports of {', '.join(f'{rs.address}:{rs.port}' for rs in ported)} "
                                              "left out: keepalived ignores real server ports of firewall-mark "
                                              "services (packets keep their destination port)")
    names = [rs.name for rs in s.realservers if rs.name]
    if names:
        out.warnings.append(f"{out.source}: {path}.realservers: keepalived has no real-server names; "
                            f"{', '.join(names)} are kept as comments only")
    checker = _Checker(out, s, path)
    checker.notes()
    for rs in s.realservers:
        out.line(1, f"real_server {_real_target(rs, s)} {{" + (f"    ! {rs.name}" if rs.name else ""))
        out.line(2, f"weight {rs.weight}")
        if rs.forwarding != s.forwarding:
            out.line(2, f"lvs_method {LB_KIND[rs.forwarding]}")
        if s.quiescent:
            out.line(2, "inhibit_on_failure    ! quiescent: weight 0 instead of removal")
        checker.write(rs)
        out.line(1, "}")
    if not s.realservers and s.quiescent:
        out.line(1, "inhibit_on_failure")
    out.raw("}")
    out.raw("")


def _real_target(rs: RealServerSpec, s: ServiceSpec) -> str:
    """``ADDRESS PORT``, or only the address for a firewall-mark service (packets keep their port)."""
    return rs.address if s.fwmark is not None else f"{rs.address} {rs.port}"


class _Checker:
    """The service's one check, written into every real server (keepalived checks per real server)."""

    def __init__(self, out: _Writer, s: ServiceSpec, path: str):
        self.out = out
        self.s = s
        self.c: CheckSpec | None = s.check
        self.path = f"{path}.check"

    def notes(self) -> None:
        """Service-level comments and warnings for check settings keepalived cannot carry."""
        c, out, p = self.c, self.out, self.path
        if c is None:
            out.line(1, "! no check: keepalived keeps every real server in service, as lvsmail does")
            return
        if c.type == "on":
            out.line(1, "! check type on: no checker, so keepalived keeps every real server in service")
            return
        if c.type == "off":
            out.changed(1, f"{p}.type", "off (always down) is written as a MISC_CHECK running /bin/false")
            return
        if c.type in TCP_ONLY:
            out.changed(1, f"{p}.type", f"keepalived 2.2.7 has no {TCP_ONLY[c.type]} check: TCP_CHECK only "
                                        "proves the port accepts connections")
        if c.type == "connect" and self.s.protocol == "udp":
            out.changed(1, f"{p}.type", "TCP_CHECK connects over TCP to a UDP service's port")
        if c.rise != 1:
            out.cannot(1, f"{p}.rise", f"{c.rise}: keepalived restores a real server after one good check")
        if c.start == "down":
            out.line(1, "! check.start: down is alpha (each real server starts failed)")
        if c.via == "vip":
            out.cannot(1, f"{p}.via", "vip: keepalived checks the real server's own address")
        if c.tls == "starttls":
            out.cannot(1, f"{p}.tls", "starttls: keepalived's SMTP_CHECK does not start TLS (RFC 3207)")
        for key in ("credentials", "ca_file", "server_name"):
            if getattr(c, key):
                out.cannot(1, f"{p}.{key}", "keepalived's checkers have no such setting")
        if c.mailbox != "INBOX" and c.credentials:
            out.cannot(1, f"{p}.mailbox", "keepalived has no IMAP check")
        if c.type == "https" and c.verify:
            out.changed(1, f"{p}.verify", "SSL_GET does not verify the real server's certificate")
        if c.type in ("http", "https"):
            if c.method != "GET":
                out.cannot(1, f"{p}.method", f"{c.method}: keepalived's HTTP_GET and SSL_GET always send GET")
            if c.receive is not None and not c.receive_regex and REGEX_CHARS & set(c.receive):
                out.changed(1, f"{p}.receive", f"{c.receive!r} is written as the regular expression "
                                               f"{regex_literal(c.receive)!r}, which matches the same text")
            if c.receive is not None and c.receive_regex:
                out.line(1, "! check.receive is a Python regular expression; keepalived reads it as PCRE2")
        if c.type == "external":
            out.line(1, "! lvsmail and ldirectord pass VIP VPORT RIP RPORT to the command: written into misc_path")

    def write(self, rs: RealServerSpec) -> None:
        """The checker block inside one real_server."""
        c, out = self.c, self.out
        if c is None or c.type == "on":
            return
        if c.type == "off":
            out.line(2, "MISC_CHECK {")
            out.line(3, 'misc_path "/bin/false"')
            out.line(2, "}")
            return
        kind = {"smtp": "SMTP_CHECK", "submission": "SMTP_CHECK", "http": "HTTP_GET", "https": "SSL_GET",
                "external": "MISC_CHECK"}.get(c.type, "TCP_CHECK")
        out.line(2, f"{kind} {{")
        if kind == "MISC_CHECK":
            argv = shlex.split(c.command or "/bin/true")
            vip = self.s.vip if self.s.fwmark is None else str(self.s.fwmark)
            vport = self.s.port if self.s.port is not None else 0
            argv += [str(vip), str(vport), rs.address, str(rs.port)]
            out.line(3, f"misc_path {out.script(self.path + '.command', argv)}")
            out.line(3, f"misc_timeout {_whole(c.timeout)}")
        else:
            out.line(3, f"connect_timeout {_num(c.timeout)}")
        # keepalived checks ``retry`` more times after a failure: lvsmail's fall counts the first one too.
        out.line(3, f"retry {c.fall - 1}")
        if c.fall > 1:
            # keepalived repeats a failed check after delay_before_retry (default 1 s); lvsmail after interval.
            out.line(3, f"delay_before_retry {_num(c.interval)}")
        if c.start == "down":
            out.line(3, "alpha")
        if c.port is not None and kind != "MISC_CHECK":
            out.line(3, f"connect_port {c.port}")
        if kind == "SMTP_CHECK" and c.helo:
            out.line(3, f"helo_name {out.quoted(self.path + '.helo', c.helo)}")
        if kind in ("HTTP_GET", "SSL_GET"):
            self._url()
        out.line(2, "}")

    def _url(self) -> None:
        """``url { path; status_code; regex; virtualhost }``: Debian's keepalived is built with PCRE2 regex."""
        c, out = self.c, self.out
        out.line(3, "url {")
        out.line(4, f"path {out.quoted(self.path + '.path', c.path)}")
        out.line(4, f"status_code {c.status}")
        if c.receive is not None:
            pattern = c.receive if c.receive_regex else regex_literal(c.receive)
            out.line(4, f"regex {out.escaped(self.path + '.receive', pattern)}")
        if c.host:
            out.line(4, f"virtualhost {out.quoted(self.path + '.host', c.host)}")
        out.line(3, "}")


def _whole(seconds: float) -> str:
    """misc_timeout takes whole seconds: a fraction is rounded up so the check is never cut shorter."""
    return str(int(-(-seconds // 1)))


# -- sections keepalived has no place for ---------------------------------------------------------------

#: Cluster-file sections and settings without a keepalived equivalent, and why.
_NOT_KEEPALIVED = {
    "maintenance_dir": "keepalived has no maintenance directory; set a real server's weight to 0 instead",
    "kernel": "keepalived sets no IPVS sysctls; set them with sysctl.d",
    "metrics": "keepalived has no Prometheus endpoint (its SNMP agent is the nearest)",
    "registration": "keepalived has no registration API: real servers are listed statically",
    "mail": "keepalived does not configure the real servers' mail stack (lvsmail realserver join does)",
    "realserver": "keepalived does not configure real servers (lvsmail realserver join does)",
    "availability": "the availability model is lvsmail's report, not director configuration",
}


def _sections(out: _Writer, spec: ClusterSpec) -> None:
    """One comment and warning per set cluster-file section keepalived has no place for."""
    for key, why in _NOT_KEEPALIVED.items():
        if getattr(spec, key):
            out.cannot(0, key, why)

