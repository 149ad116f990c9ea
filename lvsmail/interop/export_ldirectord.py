"""Writing one director's cluster file as an ldirectord.cf for ldirectord 4.12 (Debian 12).

The reverse of the ldirectord importer: ``lvsmail config import-ldirectord``
reads the output back to the same services.  ldirectord reads ``key=value``
lines, a ``virtual=`` line followed by lines indented with a tab, a blank line
ending the block, and strips everything after a ``#`` (even inside quotes), so
a value holding ``#`` is refused rather than silently cut.  Every setting
ldirectord cannot express becomes a ``# lvsmail:`` comment where it would have
gone and a warning returned to the caller.
"""

from __future__ import annotations

import math
from collections import Counter

from lvsmail.config.errors import Problem
from lvsmail.interop.export_keepalived import REGEX_CHARS, ExportResult, ExportWriter, regex_literal
from lvsmail.interop.ldirectord_virtual import SERVICE_BY_PORT
from lvsmail.spec import ClusterSpec, RealServerSpec, ServiceSpec

__all__ = ["ExportResult", "export_ldirectord"]

#: lvsmail forwarding methods in ldirectord's words.
METHOD = {"dr": "gate", "tun": "ipip", "nat": "masq"}
#: lvsmail check types ldirectord negotiates, and its ``service=`` for each.
NEGOTIATE = {"smtp": "smtp", "submission": "submission", "imap": "imap", "imaps": "imaps", "pop3": "pop",
             "pop3s": "pops", "http": "http", "https": "https"}
#: Where ldirectord logs by default on Debian.
DEFAULT_LOGFILE = "/var/log/ldirectord.log"


def export_ldirectord(spec: ClusterSpec, *, logfile: str = DEFAULT_LOGFILE) -> ExportResult:
    """ldirectord.cf text for ``spec`` (one director's cluster file) and the warnings.

    Raises ConfigError when a value cannot be written so that ldirectord reads it back
    unchanged (a ``#`` in a request path, for example).
    """
    out = _Writer(spec.source)
    out.raw(f"# ldirectord.cf for ldirectord 4.12, written by `lvsmail config export-ldirectord` from "
            f"{out.source_label}.")
    out.raw(f"# Cluster {spec.name}.  Read it back with: lvsmail config import-ldirectord FILE")
    out.raw("# Lines starting '# lvsmail:' name settings ldirectord cannot express (also printed as warnings).")
    exported = [(i, s) for i, s in enumerate(spec.services) if _expressible(out, s, f"services[{i}]")]
    shared = _globals(out, spec, [s for _i, s in exported], logfile)
    names: Counter[str] = Counter()
    for index, service in exported:
        _virtual(out, service, f"services[{index}]", shared, names)
    return out.result()


class _Writer(ExportWriter):
    """ldirectord.cf: global lines, virtual blocks indented with a tab, ``#`` comments."""

    def __init__(self, source: str):
        super().__init__(source, "#", "ldirectord.cf")

    def block(self, text: str) -> None:
        """A line of the current virtual block (ldirectord: indented; a tab counts as four spaces)."""
        self.lines.append("\t" + text)

    def cannot(self, path: str, why: str, *, inside: bool = False) -> None:
        """A setting ldirectord cannot express, noted globally or ``inside`` the current block."""
        self.note_cannot("\t" if inside else "", path, why)

    def changed(self, path: str, why: str, *, inside: bool = False) -> None:
        """A setting written with a different meaning, noted globally or ``inside`` the current block."""
        self.note_changed("\t" if inside else "", path, why)

    def value(self, path: str, text: str) -> str:
        """A value ldirectord reads back whole: no '#' (comment), quote or line break."""
        if any(ch in text for ch in '#"\n\r\0'):
            self.problems.append(Problem(self.source, None, path, f"{text!r}: ldirectord cuts a value at '#' and "
                                                                  "cannot read a quote or line break in it"))
        return text


def _expressible(out: _Writer, s: ServiceSpec, path: str) -> bool:
    """ldirectord pairs virtual6 with real6 only: an IPv6 service over IPv4 tunnels is left out."""
    families = {":" in rs.address for rs in (*s.realservers, *([s.fallback] if s.fallback else []))}
    if families - {s.family == "inet6"}:
        out.cannot(path, f"service {s.name}: ldirectord cannot mix address families in one virtual service "
                         "(virtual6 takes only real6); the service is left out")
        return False
    return True


def _seconds(out: _Writer, path: str, value: float, inside: bool = False) -> int:
    """ldirectord takes whole seconds: a fraction is rounded up (a check is never cut shorter)."""
    whole = max(1, math.ceil(value))
    if whole != value:
        out.changed(path, f"{value:g} s written as {whole} s (ldirectord takes whole seconds)", inside=inside)
    return whole


def _shared(values: list) -> object | None:
    """The one value every service has, or None when they differ (or there is none)."""
    return values[0] if values and all(v == values[0] for v in values) else None


def _globals(out: _Writer, spec: ClusterSpec, services: list[ServiceSpec], logfile: str) -> dict:
    """Global lines; returns the settings every virtual inherits (so blocks repeat only what differs)."""
    checked = [s.check for s in services if s.check is not None and s.check.type not in ("on", "off")]
    shared = {"timeout": _shared([c.timeout for c in checked]), "interval": _shared([c.interval for c in checked]),
              "quiescent": _shared([s.quiescent for s in services])}
    if shared["timeout"] is not None:
        out.raw(f"checktimeout={_seconds(out, 'check.timeout', shared['timeout'])}")
    if shared["interval"] is not None:
        out.raw(f"checkinterval={_seconds(out, 'check.interval', shared['interval'])}")
    elif checked:
        # ldirectord honours a per-virtual checkinterval only when each virtual has its own process.  A comment
        # must have a line of its own: ldirectord reads the rest of a global line as its value.
        out.raw("# the services' check intervals differ: each virtual runs its own checker process")
        out.raw("fork=yes")
    out.raw("autoreload=no")
    out.raw(f'logfile="{out.value("logfile", logfile)}"')
    out.raw(f"quiescent={'yes' if shared['quiescent'] else 'no'}")
    if spec.maintenance_dir:
        out.raw(f"maintenancedir={out.value('maintenance_dir', spec.maintenance_dir)}")
    if spec.alerts is not None:
        _alerts(out, spec)
    for key, why in _NOT_LDIRECTORD.items():
        if getattr(spec, key):
            out.cannot(key, why)
    if any(getattr(spec.timeouts, k) is not None for k in ("tcp", "tcpfin", "udp")):
        out.cannot("timeouts", "ldirectord does not set IPVS timeouts; run ipvsadm --set at boot")
    if shared["quiescent"] is None:
        shared["quiescent"] = False  # the global written above; blocks that differ say so
    return shared


#: Cluster-file sections without an ldirectord equivalent, and why.
_NOT_LDIRECTORD = {
    "failover": "ldirectord has no failover: heartbeat (haresources) moves the VIPs and starts ldirectord",
    "sync": "ldirectord does not run the IPVS sync daemon (heartbeat's LVSSyncDaemonSwap resource did)",
    "kernel": "ldirectord sets no IPVS sysctls; set them with sysctl.d",
    "metrics": "ldirectord has no Prometheus endpoint",
    "registration": "ldirectord has no registration API: real servers are listed statically",
    "mail": "ldirectord does not configure the real servers' mail stack (lvsmail realserver join does)",
    "realserver": "ldirectord does not configure real servers (lvsmail realserver join does)",
    "availability": "the availability model is lvsmail's report, not director configuration",
}


def _alerts(out: _Writer, spec: ClusterSpec) -> None:
    """Mail alerts: emailalert, emailalertfrom, emailalertfreq, smtp."""
    alerts = spec.alerts
    if alerts.email:
        out.raw(f"emailalert={out.value('alerts.email', ', '.join(alerts.email))}")
        out.raw(f"emailalertfrom={out.value('alerts.email_from', alerts.email_from)}")
        host = f"[{alerts.smtp_host}]" if ":" in alerts.smtp_host else alerts.smtp_host
        out.raw(f"smtp={host}:{alerts.smtp_port}")
        if alerts.repeat:
            out.raw(f"emailalertfreq={alerts.repeat}")
    elif alerts.repeat:
        out.cannot("alerts.repeat", "ldirectord repeats only mail alerts, and no address is given")
    if alerts.webhook:
        out.cannot("alerts.webhook", "ldirectord has no webhook; its fallbackcommand is the nearest")


def _virtual(out: _Writer, s: ServiceSpec, path: str, shared: dict, names: Counter[str]) -> None:
    """One ``virtual=`` block; a blank line before it ends the previous one."""
    out.raw("")
    out.raw(f"# service {s.name}")
    _name_warning(out, s, path, names)
    if s.fwmark is not None:
        out.raw(f"virtual{'6' if s.family == 'inet6' else ''}={s.fwmark}")
    elif s.family == "inet6":
        out.raw(f"virtual6=[{s.vip}]:{s.port}")
    else:
        out.raw(f"virtual={s.vip}:{s.port}")
    for rs in s.realservers:
        out.block(f"{_real_key(rs)}={_target(rs, s)} {METHOD[rs.forwarding]} {rs.weight}"
                  + (f"    # {rs.name}" if rs.name else ""))
    reals_named = [rs.name for rs in s.realservers if rs.name]
    if reals_named:
        out.warnings.append(f"{out.source}: {path}.realservers: ldirectord has no real-server names; "
                            f"{', '.join(reals_named)} are kept as comments only")
    if s.fallback is not None:
        out.block(f"{'fallback6' if s.family == 'inet6' else 'fallback'}={_target(s.fallback, s)} "
                  f"{METHOD[s.fallback.forwarding]}")
    out.block(f"scheduler={s.scheduler}")
    if s.persistent:
        out.block(f"persistent={s.persistent}")
        if s.netmask:
            out.block(f"netmask={s.netmask}")
    out.block(f"protocol={'fwm' if s.fwmark is not None else s.protocol}")
    if s.quiescent != shared["quiescent"]:
        out.block(f"quiescent={'yes' if s.quiescent else 'no'}")
    _check(out, s, f"{path}.check", shared)


def _name_warning(out: _Writer, s: ServiceSpec, path: str, names: Counter[str]) -> None:
    """Warn when the service's name would not come back (ldirectord names nothing; the importer derives it)."""
    c = s.check
    if s.fwmark is not None:
        base = f"fwmark-{s.fwmark}" if c is None or c.type not in NEGOTIATE else _import_name(NEGOTIATE[c.type])
    elif c is not None and c.type in NEGOTIATE:
        base = _import_name(NEGOTIATE[c.type])
    else:
        service = SERVICE_BY_PORT.get(s.port, "none")
        base = f"{s.protocol}-{s.port}" if service == "none" else _import_name(service)
    names[base] += 1
    back = base if names[base] == 1 else f"{base}-{names[base]}"
    if back != s.name:
        out.warnings.append(f"{out.source}: {path}.name: ldirectord has no service names: {s.name!r} is kept as a "
                            f"comment and reads back as {back!r}")


def _import_name(service: str) -> str:
    """lvsmail's name for an ldirectord ``service=`` (its pop/pops are POP3)."""
    return {"pop": "pop3", "pops": "pop3s", "http_proxy": "http-proxy"}.get(service, service)


def _real_key(rs: RealServerSpec) -> str:
    """``real`` or ``real6``: ldirectord names the family in the key."""
    return "real6" if ":" in rs.address else "real"


def _target(rs: RealServerSpec, s: ServiceSpec) -> str:
    """``addr:port``, ``[v6]:port``, or only the address on a fwmark service when the port is kept (0)."""
    host = f"[{rs.address}]" if ":" in rs.address else rs.address
    return host if s.fwmark is not None and not rs.port else f"{host}:{rs.port}"


def _check(out: _Writer, s: ServiceSpec, path: str, shared: dict) -> None:
    """checktype and service; the timeouts and interval where they differ from the globals; request/receive."""
    c = s.check
    if c is None or c.type == "on":
        out.block("checktype=on")
        return
    if c.type == "off":
        out.block("checktype=off")
        return
    if c.type == "external":
        out.block("checktype=external")
        out.block(f'checkcommand="{out.value(path + ".command", c.command or "/bin/true")}"')
    elif c.type in NEGOTIATE:
        out.block(f"service={NEGOTIATE[c.type]}")
        out.block("checktype=negotiate")
    else:
        if c.type == "smtps":
            out.changed(f"{path}.type", "ldirectord has no SMTP-over-TLS check: a connect check proves only that "
                                        "the port accepts connections", inside=True)
        elif c.type == "connect" and s.protocol == "udp":
            out.changed(f"{path}.type", "ldirectord pings UDP real servers for a connect check", inside=True)
        out.block("checktype=connect")
    if shared["timeout"] is None:
        out.block(f"checktimeout={_seconds(out, path + '.timeout', c.timeout, inside=True)}")
    if shared["interval"] is None:
        out.block(f"checkinterval={_seconds(out, path + '.interval', c.interval, inside=True)}")
    if c.fall != 1:
        out.block(f"failurecount={c.fall}")
    if c.port is not None:
        out.block(f"checkport={c.port}")
    if c.type in ("http", "https"):
        _http(out, c, path)
    _unsupported(out, c, path)


def _http(out: _Writer, c, path: str) -> None:
    """request=, receive= (a Perl regular expression), virtualhost=, httpmethod=."""
    out.block(f'request="{out.value(path + ".path", c.path)}"')
    if c.receive is not None:
        pattern = c.receive if c.receive_regex else regex_literal(c.receive)
        if not c.receive_regex and REGEX_CHARS & set(c.receive):
            out.changed(f"{path}.receive", f"{c.receive!r} is written as the regular expression {pattern!r}, "
                                           "which matches the same text", inside=True)
        # '#' would start a comment; \x23 is the same character to Perl and Python.
        out.block(f'receive="{out.value(path + ".receive", pattern.replace("#", chr(92) + "x23"))}"')
        if c.receive_regex:
            out.block("# lvsmail: check.receive is a Python regular expression; ldirectord reads it as Perl's")
    if c.host:
        out.block(f'virtualhost="{out.value(path + ".host", c.host)}"')
    if c.method in ("GET", "HEAD"):
        if c.method != "GET":
            out.block(f"httpmethod={c.method}")
    else:
        out.cannot(f"{path}.method", f"{c.method}: ldirectord sends GET or HEAD", inside=True)
    if c.status != 200:
        out.cannot(f"{path}.status", f"{c.status}: ldirectord accepts any successful (2xx) response", inside=True)


def _unsupported(out: _Writer, c, path: str) -> None:
    """Check settings ldirectord has no place for."""
    if c.rise != 1:
        out.cannot(f"{path}.rise", f"{c.rise}: ldirectord restores a real server after one good check", inside=True)
    if c.start == "down":
        out.cannot(f"{path}.start", "down: ldirectord adds real servers before their first check", inside=True)
    if c.via == "vip":
        out.cannot(f"{path}.via", "vip: ldirectord checks the real server's own address", inside=True)
    if c.helo:
        out.cannot(f"{path}.helo", "ldirectord's SMTP check greets with its own host name", inside=True)
    if c.tls == "starttls":
        out.cannot(f"{path}.tls", "starttls: ldirectord's checks do not start TLS", inside=True)
    if c.credentials:
        out.cannot(f"{path}.credentials", "ldirectord takes login= and passwd= in the file itself; lvsmail keeps "
                                          "secrets out of configuration files", inside=True)
    for key in ("ca_file", "server_name"):
        if getattr(c, key):
            out.cannot(f"{path}.{key}", "ldirectord's checks have no such setting", inside=True)
    if c.type == "https" and c.verify:
        out.changed(f"{path}.verify", "ldirectord does not verify the real server's certificate", inside=True)
