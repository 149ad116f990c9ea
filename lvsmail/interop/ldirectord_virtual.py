"""One ldirectord virtual block, with the globals it inherits, as a cluster-file service.

Defaults, inheritance and timeout lookup follow ldirectord's own behaviour, so
the imported service does what the old configuration did; anything that cannot
be carried over is noted as a warning naming the directive and its line.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

from lvsmail.config.errors import Problem
from lvsmail.config.tree import Node, node
from lvsmail.spec import FORWARDING_ALIASES

#: Directives only valid at the top of the file.
GLOBAL_ONLY = frozenset({"autoreload", "callback", "logfile", "execute", "fork", "supervised",
                         "readdquiescent", "maintenancedir", "emailalertfrom", "connecttimeout"})
#: Directives valid at the top (as defaults) and inside a virtual block.
INHERITED = frozenset({"checktimeout", "negotiatetimeout", "checkinterval", "checkcount", "failurecount",
                       "fallback", "fallback6", "fallbackcommand", "quiescent", "emailalert",
                       "emailalertfreq", "emailalertstatus", "cleanstop", "smtp"})
#: Directives only valid inside a virtual block.
VIRTUAL_ONLY = frozenset({"real", "real6", "request", "receive", "checktype", "checkcommand", "checkport",
                          "login", "passwd", "database", "secret", "load", "scheduler", "persistent",
                          "netmask", "protocol", "ops", "service", "httpmethod", "virtualhost", "monitorfile"})

_ALERTS = ("lvsmail's alerts are cluster-wide (alerts: at the top of the cluster file, from the global "
           "emailalert); a per-virtual setting is not kept")
#: Why each directive without an lvsmail equivalent is left out.
UNSUPPORTED = {
    "autoreload": "lvsmail never watches the cluster file; reload the director after editing it",
    "callback": "lvsmail runs no command when its configuration file changes",
    "execute": "run one lvsmail director per cluster file instead of chained instances",
    "logfile": "lvsmail logs to standard error (the journal under systemd); it has no log-file setting",
    "fork": "lvsmail checks every service concurrently; there is no fork setting",
    "supervised": "running in the foreground is the service manager's choice, not the cluster file's",
    "readdquiescent": "not configurable in lvsmail",
    "cleanstop": "what happens to the IPVS table when lvsmail stops is not a cluster-file setting",
    "connecttimeout": "ldirectord itself no longer accepts it; negotiatetimeout/checktimeout apply",
    "checkcount": "ldirectord deprecated it (ping checks only); failurecount maps to fall",
    "fallbackcommand": "lvsmail runs no command when all real servers are down",
    "monitorfile": "check results go to the director's log",
    "emailalert": _ALERTS, "emailalertfreq": _ALERTS, "emailalertfrom": _ALERTS, "smtp": _ALERTS,
    "emailalertstatus": "lvsmail mails every up/down transition (and reminders with alerts.repeat); "
                        "ldirectord's own start/stop/reload states are not mailed",
    "login": "credentials must not be in the cluster file: put them in a root-only file and set "
             "check.credentials to its path",
    "passwd": "credentials must not be in the cluster file: put them in a root-only file and set "
              "check.credentials to its path",
    "database": "lvsmail has no SQL checks",
    "secret": "lvsmail has no RADIUS checks",
    "load": "not documented by ldirectord; lvsmail has no equivalent",
    "ops": "lvsmail services have no one-packet scheduling (ipvsadm -o)",
}

#: ldirectord ``service=`` names lvsmail checks natively, and the check type for each.
NEGOTIATE_TYPES = {"smtp": "smtp", "submission": "submission", "imap": "imap", "imaps": "imaps",
                   "pop": "pop3", "pops": "pop3s", "http": "http", "https": "https"}
#: Every ``service=`` ldirectord accepts.
SERVICES = ("dns", "ftp", "http", "https", "http_proxy", "imap", "imaps", "ldap", "mysql", "nntp", "none",
            "oracle", "pgsql", "pop", "pops", "radius", "simpletcp", "sip", "smtp", "submission")
#: Port numbers for service names, as ldirectord's own table (no /etc/services lookup).
PORTS = {"ftp": 21, "smtp": 25, "domain": 53, "dns": 53, "http": 80, "www": 80, "pop3": 110, "pop": 110,
         "nntp": 119, "imap": 143, "imap2": 143, "ldap": 389, "https": 443, "smtps": 465, "submissions": 465,
         "submission": 587, "imaps": 993, "pop3s": 995, "pops": 995, "oracle": 1521, "radius": 1812,
         "http_proxy": 3128, "mysql": 3306, "sip": 5060, "pgsql": 5432, "postgresql": 5432}
#: ldirectord's default ``service`` for a virtual port.
SERVICE_BY_PORT = {21: "ftp", 25: "smtp", 53: "dns", 80: "http", 110: "pop", 119: "nntp", 143: "imap",
                   389: "ldap", 443: "https", 587: "submission", 993: "imaps", 995: "pops", 1521: "oracle",
                   1812: "radius", 3128: "http_proxy", 3306: "mysql", 5060: "sip", 5432: "pgsql"}
#: ldirectord's built-in defaults (checkinterval 10 s, checktimeout 5 s, negotiatetimeout 30 s).
DEFAULT_INTERVAL, DEFAULT_CHECKTIMEOUT, DEFAULT_NEGOTIATETIMEOUT = 10, 5, 30
_REGEX_CHARS = set(".^$*+?{}[]\\|()")


@dataclass
class Directive:
    """One ``key=value`` line of ldirectord.cf."""

    line: int
    key: str
    value: str


@dataclass
class Virtual:
    """A ``virtual=``/``virtual6=`` line and the directives indented under it."""

    line: int
    family: str
    target: str
    directives: list[Directive] = field(default_factory=list)


class Notes:
    """Problems and warnings of one import, and the service names handed out so far."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.names: Counter[str] = Counter()

    def error(self, line: int | None, key: str, message: str) -> None:
        """The input is broken (ldirectord would refuse it too, or lvsmail cannot read it)."""
        self.problems.append(Problem(self.source, line, key, message))

    def cannot(self, d: Directive, why: str) -> None:
        """Warn that a directive has no lvsmail equivalent and is left out."""
        self.warnings.append(f"{self.source}:{d.line}: directive '{d.key}' cannot be expressed: {why}")

    def changed(self, d: Directive, why: str) -> None:
        """Warn that a directive was carried over with a different meaning."""
        self.warnings.append(f"{self.source}:{d.line}: directive '{d.key}' imported with a change: {why}")

    def unique_name(self, base: str) -> str:
        """``smtp``, then ``smtp-2``, ``smtp-3`` for later services of the same kind."""
        self.names[base] += 1
        return base if self.names[base] == 1 else f"{base}-{self.names[base]}"


class VirtualReader:
    """Turns one virtual block (plus inherited globals) into a service mapping."""

    def __init__(self, notes: Notes, globals_: dict[str, Directive], v: Virtual):
        self.notes, self.globals, self.v = notes, globals_, v
        self.local: dict[str, Directive] = {}
        self.reals: list[Directive] = []
        self.used: set[str] = set()
        for d in v.directives:
            ipv6_key, ipv6_block = d.key.endswith("6"), v.family == "inet6"
            if d.key in ("real", "real6", "fallback", "fallback6") and ipv6_key != ipv6_block:
                right = d.key.rstrip("6") + ("6" if ipv6_block else "")
                notes.error(d.line, d.key, f"use {right} in a {'virtual6' if ipv6_block else 'virtual'} block")
            elif d.key in ("real", "real6"):
                self.reals.append(d)
            elif d.key in GLOBAL_ONLY:
                notes.error(d.line, d.key, "is only valid at the top of the file, not in a virtual block")
            elif d.key not in INHERITED | VIRTUAL_ONLY:
                notes.error(d.line, d.key, "is not an ldirectord directive")
            else:
                self.local[d.key] = d

    def get(self, key: str, inherit: bool = True) -> Directive | None:
        """The block's own setting, else the global default; marks it as used."""
        self.used.add(key)
        return self.local.get(key) or (self.globals.get(key) if inherit else None)

    def at(self, d: Directive | None, value) -> Node:
        """A tree value placed at the directive's line (the virtual line if inherited from nowhere)."""
        return node(value, d.line if d is not None else self.v.line)

    def service(self) -> Node | None:
        """The service mapping at the virtual line, or None if the block cannot be converted."""
        before = len(self.notes.problems)
        ident = self._identity()
        if ident is None:
            return None
        svc, vport, protocol, svc_name = ident
        reals = [rs for d in self.reals for rs in self._real(d, vport)]
        forwardings = Counter(rs["forwarding"].value for rs in reals)
        forwarding = forwardings.most_common(1)[0][0] if reals else "dr"
        for rs in reals:
            if rs["forwarding"].value == forwarding:
                del rs["forwarding"]
        reals = [node(rs, rs["address"].line) for rs in reals]
        svc["forwarding"] = node(forwarding, self.v.line)
        scheduler = self.get("scheduler", inherit=False)
        svc["scheduler"] = self.at(scheduler, scheduler.value if scheduler else "wrr")  # ldirectord's default
        self._persistence(svc)
        quiescent = self.get("quiescent")
        if quiescent is not None:
            svc["quiescent"] = self.at(quiescent, yes_no(self.notes, quiescent))
        fallback = self._fallback(vport)
        if fallback is not None:
            svc["fallback"] = fallback
        svc["realservers"] = reals
        check = self._check(svc_name, protocol)
        if check is not None:
            svc["check"] = node(check, check["type"].line)
        self._leftovers()
        return node(svc, self.v.line) if len(self.notes.problems) == before else None

    def _identity(self):
        """(service mapping, virtual port, protocol, ldirectord service name) of the block."""
        v, notes = self.v, self.notes
        protocol_d = self.get("protocol", inherit=False)
        protocol = protocol_d.value if protocol_d else None
        if re.fullmatch(r"\d+", v.target):
            if protocol not in (None, "fwm"):
                notes.error(protocol_d.line, "protocol", "must be fwm for a firewall-mark virtual service")
            service_d = self.get("service", inherit=False)
            svc_name = service_d.value if service_d else "none"
            base = f"fwmark-{int(v.target)}" if svc_name == "none" else _lvs_service_name(svc_name)
            svc = {"name": node(self.notes.unique_name(base), v.line), "fwmark": node(int(v.target), v.line)}
            if v.family == "inet6":
                svc["family"] = node("inet6", v.line)
            return self._check_service_name(service_d, svc_name, svc, 0, "fwm")
        pattern = r"\[([^\]]+)\]:(\S+)" if v.family == "inet6" else r"([^\s:\[\]]+):(\S+)"
        match = re.fullmatch(pattern, v.target)
        if not match:
            form = "[IPv6 address]:port" if v.family == "inet6" else "address:port"
            key = "virtual6" if v.family == "inet6" else "virtual"
            notes.error(v.line, key, f"{v.target!r} is neither {form} nor a firewall mark")
            return None
        address = _address(notes, v.line, "virtual", match[1])
        port = _port(notes, v.line, "virtual", match[2])
        if address is None or port is None:
            return None
        if protocol is None:
            protocol = "udp" if port == 53 else "tcp"
        elif protocol not in ("tcp", "udp"):
            notes.error(protocol_d.line, "protocol", f"{protocol!r} must be tcp or udp for an address:port virtual")
            return None
        service_d = self.get("service", inherit=False)
        svc_name = service_d.value if service_d else SERVICE_BY_PORT.get(port, "none")
        base = f"{protocol}-{port}" if svc_name == "none" else _lvs_service_name(svc_name)
        svc = {"name": node(self.notes.unique_name(base), v.line), "vip": node(address, v.line)}
        if protocol != "tcp":
            svc["protocol"] = self.at(protocol_d, protocol)
        svc["port"] = node(port, v.line)
        return self._check_service_name(service_d, svc_name, svc, port, protocol)

    def _check_service_name(self, d: Directive | None, svc_name: str, svc: dict, port: int, protocol: str):
        """Refuse a ``service=`` ldirectord would refuse."""
        if d is not None and svc_name not in SERVICES:
            self.notes.error(d.line, "service", f"{svc_name!r} is not an ldirectord service; expected one of "
                                                f"{', '.join(SERVICES)}")
            return None
        return svc, port, protocol, svc_name

    def _real(self, d: Directive, vport: int) -> list[dict]:
        """``real=addr[->addr][:port] gate|masq|ipip [weight] ["request", "receive"]``."""
        notes = self.notes
        match = re.fullmatch(r'(\S+)\s+(\w+)(?:\s+(\d+))?(?:\s+"(.*)"[, ]\s*"(.*)")?\s*', d.value)
        if not match:
            notes.error(d.line, d.key, f"{d.value!r}: expected address[:port] gate|masq|ipip [weight]")
            return []
        target, method, weight, request = match[1], match[2], match[3], match[4]
        if method not in ("gate", "masq", "ipip"):
            notes.error(d.line, d.key, f"forwarding method {method!r} must be gate, masq or ipip")
            return []
        if request is not None:
            notes.cannot(d, "per-real-server request/receive overrides are not supported; "
                            "this real server gets the service's check")
        addresses, port = self._real_target(d, target)
        port = self._fixed_port(d, FORWARDING_ALIASES[method], port, vport, "real server")
        reals = []
        for address in addresses:
            rs = {"address": self.at(d, address), "forwarding": self.at(d, FORWARDING_ALIASES[method])}
            if port:  # 0 (fwmark services) is the cluster file's default
                rs["port"] = self.at(d, port)
            if weight is not None and int(weight) != 1:
                rs["weight"] = self.at(d, int(weight))
            reals.append(rs)
        return reals

    def _real_target(self, d: Directive, target: str) -> tuple[list[str], int | None]:
        """Addresses (a ``first->last`` IPv4 range expands) and the port, if any."""
        notes = self.notes
        if target.startswith("["):
            match = re.fullmatch(r"\[([^\]]+)\](?::(\S+))?", target)
            if not match:
                notes.error(d.line, d.key, f"{target!r} is not [IPv6 address]:port")
                return [], None
            host, port_text = match[1], match[2]
        else:
            host, _, port_text = target.partition(":")
            port_text = port_text or None
        port = _port(notes, d.line, d.key, port_text) if port_text else None
        first, _, last = host.partition("->")
        start = _address(notes, d.line, d.key, first)
        if not last:
            return ([start] if start else []), port
        end = _address(notes, d.line, d.key, last)
        if start is None or end is None:
            return [], port
        a, b = ipaddress.ip_address(start), ipaddress.ip_address(end)
        if a.version != 4 or b.version != 4 or int(b) < int(a) or int(b) - int(a) >= 1024:
            notes.error(d.line, d.key, f"{host!r}: ranges must be IPv4, ascending, at most 1024 addresses")
            return [], port
        return [str(ipaddress.ip_address(i)) for i in range(int(a), int(b) + 1)], port

    def _fixed_port(self, d: Directive, forwarding: str, port: int | None, vport: int, what: str) -> int:
        """gate/ipip cannot rewrite ports, so ldirectord uses the virtual port for them."""
        if vport == 0:
            return port or 0
        if forwarding != "nat" and port not in (None, vport):
            self.notes.changed(d, f"{what} port {port} replaced by the virtual port {vport}: "
                                  f"{forwarding} forwarding cannot change ports (ldirectord does the same)")
            return vport
        return port or vport

    def _persistence(self, svc: dict) -> None:
        """persistent and netmask (netmask matters only with persistence, in ldirectord too)."""
        persistent, netmask = self.get("persistent", inherit=False), self.get("netmask", inherit=False)
        if persistent is not None:
            if not persistent.value.isdigit():
                self.notes.error(persistent.line, "persistent", f"{persistent.value!r} is not a number of seconds")
            elif int(persistent.value):
                svc["persistent"] = self.at(persistent, int(persistent.value))
        if netmask is not None:
            if "persistent" not in svc:
                self.notes.cannot(netmask, "it has no effect without persistent (ldirectord ignores it too)")
            else:
                value = int(netmask.value) if netmask.value.isdigit() else netmask.value
                svc["netmask"] = self.at(netmask, value)

    def _fallback(self, vport: int) -> Node | None:
        """The sorry server: ``fallback=addr[:port] [gate|masq|ipip]`` (fallback6 for IPv6)."""
        key = "fallback6" if self.v.family == "inet6" else "fallback"
        d = self.get(key)
        if d is None:
            return None
        parts = d.value.split()
        method = parts[1] if len(parts) > 1 else "gate"
        if len(parts) > 2 or method not in ("gate", "masq", "ipip"):
            self.notes.error(d.line, key, f"{d.value!r}: expected address[:port] [gate|masq|ipip]")
            return None
        forwarding = FORWARDING_ALIASES[method]
        addresses, port = self._real_target(d, parts[0])
        if not addresses:
            return None
        port = self._fixed_port(d, forwarding, port, vport, "fallback")
        fallback = {"address": self.at(d, addresses[0]), "forwarding": self.at(d, forwarding)}
        if port:
            fallback["port"] = self.at(d, port)
        return node(fallback, d.line)

    def _check(self, svc_name: str, protocol: str) -> dict | None:
        """The health check: checktype and service pick the type; timeouts resolve as ldirectord does."""
        ct = self.get("checktype", inherit=False)
        checktype = ct.value if ct else "negotiate"
        if not re.fullmatch(r"\d+|connect|negotiate|off|on|ping|external|external-perl", checktype):
            self.notes.error(ct.line, "checktype", f"{checktype!r} must be connect, negotiate, on, off, ping, "
                                                   "external, external-perl or a number")
            return None
        if checktype in ("off", "on"):
            return {"type": self.at(ct, checktype)}
        negotiate = checktype == "negotiate" or checktype.isdigit()
        kind = self._check_type(ct, checktype, svc_name, protocol, negotiate)
        if kind == "on":
            return {"type": self.at(ct, "on")}
        check: dict = {"type": self.at(ct, kind)}
        interval = self.get("checkinterval")
        if "checkinterval" in self.local:
            fork = self.globals.get("fork")
            if fork is None or fork.value != "yes":
                self.notes.changed(interval, "ldirectord ignores a per-virtual checkinterval unless fork=yes; "
                                             "lvsmail uses it for this service")
        check["interval"] = self.at(interval, _positive(self.notes, interval, DEFAULT_INTERVAL))
        check["timeout"] = self._timeout(negotiate and kind != "connect")
        failures = self.get("failurecount")
        if failures is not None:
            check["fall"] = self.at(failures, _positive(self.notes, failures, 1))
        port = self.get("checkport", inherit=False)
        if port is not None:
            check["port"] = self.at(port, _port(self.notes, port.line, "checkport", port.value))
        if kind in ("http", "https"):
            self._http(check)
        if kind == "external":
            command = self.get("checkcommand", inherit=False)
            check["command"] = self.at(command, command.value if command else "/bin/true")
        return check

    def _check_type(self, ct: Directive | None, checktype: str, svc_name: str, protocol: str,
                    negotiate: bool) -> str:
        """lvsmail's check type for ldirectord's checktype + service, warning on approximations."""
        if checktype == "ping":
            self.notes.changed(ct, "lvsmail has no ICMP check; imported as a connect check on the service port")
            return "connect"
        if checktype in ("external", "external-perl"):
            if checktype == "external-perl":
                self.notes.changed(ct, "the command is run as a program, not evaluated by Perl; "
                                       "give it a #!/usr/bin/perl line and make it executable")
            return "external"
        if checktype == "connect":
            if protocol == "udp":
                self.notes.changed(ct, "ldirectord pings UDP real servers here; lvsmail runs a connect check")
            return "connect"
        if checktype.isdigit():
            self.notes.changed(ct, f"lvsmail has no combined check ({checktype} connects, then one negotiate); "
                                   "it runs the full negotiate check every interval")
        service_d = self.get("service", inherit=False)
        if svc_name == "none":
            return "on"  # ldirectord's negotiate check for service none marks servers up
        if svc_name in NEGOTIATE_TYPES:
            return NEGOTIATE_TYPES[svc_name]
        where = service_d or ct or Directive(self.v.line, "service", svc_name)
        self.notes.changed(where, f"lvsmail has no {svc_name} check; imported as a connect check on the same port")
        return "connect"

    def _timeout(self, negotiate: bool) -> Node:
        """ldirectord's lookup: negotiate checks prefer negotiatetimeout, the others checktimeout.

        Each falls back to the other in the block, then to the globals in the same order,
        then to ldirectord's default (30 s negotiate, 5 s otherwise).
        """
        first, second = ("negotiatetimeout", "checktimeout") if negotiate else ("checktimeout", "negotiatetimeout")
        self.used.update((first, second))
        for d in (self.local.get(first), self.local.get(second), self.globals.get(first), self.globals.get(second)):
            if d is not None:
                return self.at(d, _positive(self.notes, d, 1))
        return node(DEFAULT_NEGOTIATETIMEOUT if negotiate else DEFAULT_CHECKTIMEOUT, self.v.line)

    def _http(self, check: dict) -> None:
        """request -> path, receive (a Perl regexp) -> receive, virtualhost -> host, httpmethod -> method."""
        request, receive = self.get("request", inherit=False), self.get("receive", inherit=False)
        host, method = self.get("virtualhost", inherit=False), self.get("httpmethod", inherit=False)
        if request is not None:
            check["path"] = self.at(request, request.value if request.value.startswith("/") else "/" + request.value)
        if host is not None:
            check["host"] = self.at(host, host.value)
        if method is not None:
            if method.value.upper() not in ("GET", "HEAD"):
                self.notes.error(method.line, "httpmethod", f"{method.value!r} must be GET or HEAD")
            check["method"] = self.at(method, method.value.upper())
        if receive is None:
            return
        if method is not None and method.value.upper() == "HEAD":
            self.notes.cannot(receive, "a HEAD response has no body to match")
            return
        check["receive"] = self.at(receive, receive.value)
        if _REGEX_CHARS & set(receive.value):
            try:
                re.compile(receive.value)
                check["receive_regex"] = self.at(receive, True)
            except re.error as exc:
                self.notes.changed(receive, f"the Perl regexp does not compile in Python ({exc}); "
                                            "it is matched as plain text")

    def _leftovers(self) -> None:
        """Block directives that were not used: unsupported, or meaningless for this check."""
        for key, d in self.local.items():
            if key in self.used:
                continue
            if key in UNSUPPORTED:
                self.notes.cannot(d, UNSUPPORTED[key])
            else:
                self.notes.cannot(d, "it has no effect with this service's checktype/service "
                                     "(ldirectord ignores it too)")


def _lvs_service_name(service: str) -> str:
    """Service name in lvsmail's words (ldirectord's pop/pops are POP3)."""
    return {"pop": "pop3", "pops": "pop3s", "http_proxy": "http-proxy"}.get(service, service)


def yes_no(notes: Notes, d: Directive) -> bool | None:
    """ldirectord's yes/no switches."""
    if d.value not in ("yes", "no"):
        notes.error(d.line, d.key, f"must be 'yes' or 'no', got {d.value!r}")
        return None
    return d.value == "yes"


def _positive(notes: Notes, d: Directive | None, default: int) -> int | None:
    """A whole number of seconds or counts greater than 0."""
    if d is None:
        return default
    if not d.value.isdigit() or int(d.value) == 0:
        notes.error(d.line, d.key, f"must be a whole number greater than 0, got {d.value!r}")
        return None
    return int(d.value)


def _address(notes: Notes, line: int, key: str, text: str) -> str | None:
    """An IP address; ldirectord would resolve host names, lvsmail never does."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        notes.error(line, key, f"{text!r} is not an IP address; lvsmail never resolves host names, "
                               "so write the address")
        return None


def _port(notes: Notes, line: int, key: str, text: str) -> int | None:
    """A port number or one of the service names ldirectord knows."""
    if text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    if text in PORTS:
        return PORTS[text]
    notes.error(line, key, f"port {text!r} is neither a number 1..65535 nor a known service name")
    return None
