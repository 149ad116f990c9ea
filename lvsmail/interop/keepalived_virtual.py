"""One keepalived ``virtual_server`` block as cluster-file services.

keepalived lets a setting given on the virtual server be the default of its
real servers, and a real server's the default of its checkers; the importer
resolves that inheritance with keepalived's defaults (NAT, wlc, persistence 6
minutes when persistence_timeout has no value) so the imported service does
what the old configuration did.  A virtual_server_group becomes one service
per address, range member or firewall mark, each with the same real servers.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from lvsmail.config.tree import Node, node
from lvsmail.interop.keepalived_checks import (
    CHECKERS,
    DEFAULT_PERSISTENCE,
    INHERITED,
    UNSUPPORTED,
    CheckReader,
    Item,
    Notes,
    Real,
    bool_arg,
    one_arg,
)

METHODS = {"NAT": "nat", "DR": "dr", "TUN": "tun"}
#: Service names for well-known virtual ports.
NAMES_BY_PORT = {25: "smtp", 80: "http", 110: "pop3", 143: "imap", 443: "https", 465: "smtps", 587: "submission",
                 993: "imaps", 995: "pop3s"}
#: Most addresses one range of a virtual_server_group may expand to.
MAX_RANGE = 256
VS_KEYS = frozenset({"lvs_sched", "lb_algo", "lvs_method", "lb_kind", "persistence_timeout",
                     "persistence_granularity", "protocol", "delay_loop", "connect_timeout", "retry", "nb_get_retry",
                     "delay_before_retry", "inhibit_on_failure", "alpha", "virtualhost", "quorum", "sorry_server",
                     "sorry_server_lvs_method", "ip_family", "real_server"})
RS_KEYS = frozenset({"weight", "lvs_method", "lb_kind", "inhibit_on_failure", "alpha", "connect_timeout", "retry",
                     "nb_get_retry", "delay_before_retry", "delay_loop", "virtualhost"}) | set(CHECKERS)


class VirtualServerReader:
    """Reads one virtual_server block; ``services()`` gives one service per virtual address it serves."""

    def __init__(self, notes: Notes, groups: dict[str, Item], vs: Item):
        self.notes = notes
        self.groups = groups
        self.vs = vs
        self.settings: dict[str, Item] = {}
        self.reals: list[Item] = []

    def services(self) -> list[Node]:
        """The service mappings (none if the block cannot be converted)."""
        before = len(self.notes.problems)
        if self.vs.children is None:
            self.notes.error(self.vs.line, "virtual_server", "expected a { ... } block after the address")
            return []
        for item in self.vs.children:
            if item.key == "real_server":
                self.reals.append(item)
            elif item.key in VS_KEYS:
                self.settings[item.key] = item
            elif item.key in UNSUPPORTED:
                self.notes.cannot(item, UNSUPPORTED[item.key])
            else:
                self.notes.error(item.line, item.key, "is not a virtual_server keyword")
        targets = self._targets()
        common = self._common()
        if len(self.notes.problems) > before or common is None:
            return []
        services = []
        for target in targets:
            svc = self._service(target, common)
            if svc is not None:
                services.append(node(svc, self.vs.line))
        return services if len(self.notes.problems) == before else []

    # -- which virtual addresses -----------------------------------------------------

    def _targets(self) -> list[dict]:
        """{'vip': a, 'port': p} or {'fwmark': n, 'family': f} per virtual service the block defines."""
        args, line = self.vs.args, self.vs.line
        if len(args) == 2 and args[0] == "fwmark":
            return [t for t in [self._fwmark(args[1], self._ip_family(), line)] if t]
        if len(args) == 2 and args[0] == "group":
            group = self.groups.get(args[1])
            if group is None:
                self.notes.error(line, "virtual_server", f"no virtual_server_group named {args[1]!r}")
                return []
            return self._group(group)
        if len(args) in (1, 2):
            return self._address_targets(args[0], args[1] if len(args) == 2 else None, line, "virtual_server")
        self.notes.error(line, "virtual_server", "expected: virtual_server ADDRESS PORT, fwmark N or group NAME")
        return []

    def _group(self, group: Item) -> list[dict]:
        """Each address, range and fwmark of a virtual_server_group."""
        targets: list[dict] = []
        for entry in group.children or []:
            if entry.children is not None:
                self.notes.error(entry.line, entry.key, "virtual_server_group entries take no block")
            elif entry.key == "fwmark" and len(entry.args) in (1, 2):
                family = entry.args[1] if len(entry.args) == 2 else self._ip_family()
                if family not in ("inet", "inet6"):
                    self.notes.error(entry.line, "fwmark", f"{family!r} must be inet or inet6")
                    continue
                target = self._fwmark(entry.args[0], family, entry.line)
                if target:
                    targets.append(target)
            elif entry.key != "fwmark" and len(entry.args) <= 1:
                targets += self._address_targets(entry.key, entry.args[0] if entry.args else None, entry.line,
                                                 "virtual_server_group")
            else:
                self.notes.error(entry.line, entry.key, "expected ADDRESS [PORT], RANGE [PORT] or fwmark N")
        if not targets:
            self.notes.error(group.line, "virtual_server_group", f"group {group.args[0]!r} defines no address")
        return targets

    def _fwmark(self, text: str, family: str, line: int) -> dict | None:
        if not re.fullmatch(r"\d+", text) or not 1 <= int(text) < 2**32:
            self.notes.error(line, "fwmark", f"{text!r} is not a firewall mark (1..4294967295)")
            return None
        return {"fwmark": int(text), "family": family, "line": line}

    def _ip_family(self) -> str:
        item = self.settings.get("ip_family")
        if item is None:
            return "inet"
        if item.args not in (["inet"], ["inet6"]):
            self.notes.error(item.line, "ip_family", "must be inet or inet6")
            return "inet"
        return item.args[0]

    def _address_targets(self, host: str, port: str | None, line: int, key: str) -> list[dict]:
        """An address or a range (a.b.c.d-e, a.b.c.d-e.f.g.h, a.b.c.d/nn) with its port."""
        if port is None:
            self.notes.error(line, key, f"{host}: a service without a port (keepalived's persistent port-0 "
                                        "service) cannot be expressed; use a fwmark service")
            return []
        if not re.fullmatch(r"\d+", port) or not 1 <= int(port) <= 65535:
            self.notes.error(line, key, f"port {port!r} must be a number 1..65535")
            return []
        addresses = self._expand(host, line, key)
        return [{"vip": a, "port": int(port), "line": line} for a in addresses]

    def _expand(self, host: str, line: int, key: str) -> list[str]:
        try:
            if "/" in host:
                net = ipaddress.ip_network(host, strict=False)
                first, last = net.network_address, net.broadcast_address
            elif "-" in host:
                start, _, end = host.partition("-")
                first = ipaddress.ip_address(start)
                if ":" in end or "." in end:
                    last = ipaddress.ip_address(end)
                else:  # only the last group changes: 192.0.2.1-10, 2001:db8::1-ff
                    sep = ":" if first.version == 6 else "."
                    head = first.exploded.rsplit(sep, 1)[0]
                    last = ipaddress.ip_address(f"{head}{sep}{end}")
            else:
                return [ipaddress.ip_address(host).compressed]
        except ValueError:
            self.notes.error(line, key, f"{host!r} is not an IP address or range (lvsmail never resolves names)")
            return []
        if last.version != first.version or int(last) < int(first) or int(last) - int(first) >= MAX_RANGE:
            self.notes.error(line, key, f"{host!r}: a range must be ascending and at most {MAX_RANGE} addresses")
            return []
        return [ipaddress.ip_address(i).compressed for i in range(int(first), int(last) + 1)]

    # -- settings shared by every service of the block ------------------------------

    def _common(self) -> dict | None:
        """Scheduler, forwarding, persistence, real servers, fallback and check, as tree values."""
        s, notes = self.settings, self.notes
        common: dict = {}
        sched = s.get("lvs_sched") or s.get("lb_algo")
        if sched is not None:
            common["scheduler"] = node(one_arg(self.notes, sched), sched.line)
        else:
            common["scheduler"] = node("wlc", self.vs.line)  # keepalived's default (IPVS_DEF_SCHED)
        self.forwarding = self._method(s.get("lvs_method") or s.get("lb_kind"), "nat")
        protocol = s.get("protocol")
        if protocol is not None:
            value = one_arg(self.notes, protocol).lower()
            if value not in ("tcp", "udp"):
                notes.error(protocol.line, "protocol", f"{value.upper()!r}: lvsmail services are TCP or UDP")
            common["protocol"] = node(value, protocol.line)
        self._persistence(common)
        quorum = s.get("quorum")
        if quorum is not None and one_arg(self.notes, quorum) != "1":
            notes.cannot(quorum, "lvsmail installs the fallback only when no real server is up (quorum 1)")
        # connect_timeout, retry, delay_loop, alpha, ... are read where they apply: checkers inherit them.
        reals = [r for r in (self._real(item) for item in self.reals) if r is not None]
        common["reals"] = reals
        common["check"] = CheckReader(self.notes, self.vs).service_check(reals)
        common["quiescent"] = self._quiescent(reals)
        return common

    def _persistence(self, common: dict) -> None:
        """persistence_timeout (no value: 6 minutes) and persistence_granularity (the netmask)."""
        timeout, granularity = self.settings.get("persistence_timeout"), self.settings.get("persistence_granularity")
        if timeout is not None:
            value = timeout.args[0] if timeout.args else str(DEFAULT_PERSISTENCE)
            if len(timeout.args) > 1 or not re.fullmatch(r"\d+", value):
                self.notes.error(timeout.line, "persistence_timeout", f"{' '.join(timeout.args)!r} is not seconds")
            elif int(value):
                common["persistent"] = node(int(value), timeout.line)
        if granularity is not None:
            if "persistent" not in common:
                self.notes.cannot(granularity, "it has no effect without persistence_timeout")
            else:
                mask = one_arg(self.notes, granularity)
                common["netmask"] = node(int(mask) if mask.isdigit() else mask, granularity.line)

    def _method(self, item: Item | None, default: str) -> str:
        """NAT, DR or TUN (a GUE or GRE tunnel is imported as IP-in-IP, with a warning)."""
        if item is None:
            return default
        if not item.args or item.args[0].upper() not in METHODS:
            self.notes.error(item.line, item.key, f"{' '.join(item.args)!r} must be NAT, DR or TUN")
            return default
        extra = item.args[1:]
        if extra and extra[:2] != ["type", "ipip"]:
            self.notes.changed(item, f"'{' '.join(extra)}': lvsmail tunnels are IP-in-IP only")
        return METHODS[item.args[0].upper()]

    # -- real servers ----------------------------------------------------------------

    def _real(self, item: Item) -> Real | None:
        """``real_server ADDRESS [PORT] { weight; lvs_method; checkers ... }``."""
        if not 1 <= len(item.args) <= 2:
            self.notes.error(item.line, "real_server", "expected: real_server ADDRESS [PORT]")
            return None
        try:
            address = ipaddress.ip_address(item.args[0]).compressed
        except ValueError:
            self.notes.error(item.line, "real_server", f"{item.args[0]!r} is not an IP address "
                                                       "(lvsmail never resolves host names)")
            return None
        port = None
        if len(item.args) == 2:
            if not item.args[1].isdigit() or not 0 <= int(item.args[1]) <= 65535:
                self.notes.error(item.line, "real_server", f"port {item.args[1]!r} must be 0..65535")
                return None
            port = int(item.args[1])
        real = Real(item, address, port, self.forwarding, None,
                     {k: self.settings[k] for k in INHERITED if k in self.settings})
        for child in item.children or []:
            if child.key in CHECKERS:
                real.checkers.append(child)
            elif child.key == "weight":
                text = one_arg(self.notes, child)
                if not text.isdigit() or int(text) > 65535:
                    self.notes.error(child.line, "weight", f"{text!r} must be a number 0..65535")
                else:
                    real.weight = int(text)
            elif child.key in ("lvs_method", "lb_kind"):
                real.forwarding = self._method(child, self.forwarding)
            elif child.key in RS_KEYS:
                real.settings[child.key] = child
            elif child.key in UNSUPPORTED:
                self.notes.cannot(child, UNSUPPORTED[child.key])
            else:
                self.notes.error(child.line, child.key, "is not a real_server keyword")
        return real

    def _quiescent(self, reals: list[Real]) -> bool:
        """inhibit_on_failure is per real server in keepalived, per service in lvsmail."""
        values = [(r, bool_arg(self.notes, r.settings.get("inhibit_on_failure"))) for r in reals]
        if not values:
            return bool_arg(self.notes, self.settings.get("inhibit_on_failure"))
        first = values[0][1]
        for real, value in values[1:]:
            if value != first:
                where = real.settings.get("inhibit_on_failure") or real.item
                self.notes.changed(where, f"lvsmail's quiescent is per service; real server {real.address} gets "
                                          f"the first real server's setting ({'on' if first else 'off'})")
        return first

    # -- the service -----------------------------------------------------------------

    def _service(self, target: dict, common: dict) -> dict | None:
        """One service mapping for one virtual address (or mark)."""
        line = target["line"]
        if "fwmark" in target:
            vport = None
            base = f"fwmark-{target['fwmark']}"
            svc: dict = {"name": None, "fwmark": node(target["fwmark"], line)}
            if target["family"] != "inet":
                svc["family"] = node(target["family"], line)
            if "protocol" in common and self.vs.args[0] == "fwmark":
                self.notes.cannot(self.settings["protocol"], "a firewall-mark service takes whatever the mark selects")
        else:
            vport = target["port"]
            if "protocol" not in common:
                # keepalived leaves the protocol 0, which the kernel takes as UDP (keepalived says so too).
                common["protocol"] = node("udp", self.vs.line)
                self.notes.warn(self.vs.line, "virtual_server without protocol: keepalived creates a UDP service; "
                                              "imported as udp (add 'protocol TCP' for a TCP service)")
            protocol = common["protocol"].value
            base = NAMES_BY_PORT.get(vport, f"{protocol}-{vport}") if protocol == "tcp" else f"{protocol}-{vport}"
            svc = {"name": None, "vip": node(target["vip"], line)}
            if "protocol" in common and protocol != "tcp":
                svc["protocol"] = common["protocol"]
            svc["port"] = node(vport, line)
        svc["name"] = node(self.notes.unique_name(base), line)
        svc["scheduler"] = common["scheduler"]
        for key in ("persistent", "netmask"):
            if key in common:
                svc[key] = common[key]
        reals = [self._real_node(r, vport) for r in common["reals"]]
        methods = Counter(r["forwarding"].value for r in reals)
        forwarding = methods.most_common(1)[0][0] if reals else self.forwarding
        for r in reals:
            if r["forwarding"].value == forwarding:
                del r["forwarding"]
        svc["forwarding"] = node(forwarding, self.vs.line)
        if common["quiescent"]:
            svc["quiescent"] = node(True, self.vs.line)
        fallback = self._fallback(vport, forwarding)
        if fallback is not None:
            svc["fallback"] = fallback
        svc["realservers"] = [node(r, r["address"].line) for r in reals]
        if common["check"] is not None:
            svc["check"] = common["check"]
        return svc

    def _real_node(self, real: Real, vport: int | None) -> dict:
        """A real server mapping; ``vport`` None for a firewall-mark service."""
        line = real.item.line
        port = real.port
        if vport is None:
            if port:
                self.notes.changed(real.item, f"port {port} dropped: keepalived ignores real server ports of "
                                              "firewall-mark services (packets keep their destination port)")
            port, vport = None, 0
        if vport and real.forwarding != "nat" and port not in (None, vport):
            self.notes.changed(real.item, f"port {port} replaced by the virtual port {vport}: {real.forwarding} "
                                          "forwarding cannot change ports")
            port = vport
        rs: dict = {"address": node(real.address, line), "forwarding": node(real.forwarding, line)}
        if port not in (None, vport) and port != 0:
            rs["port"] = node(port, line)
        if real.weight is not None and real.weight != 1:
            rs["weight"] = node(real.weight, line)
        return rs

    def _fallback(self, vport: int | None, forwarding: str) -> Node | None:
        """``sorry_server ADDRESS [PORT]`` with ``sorry_server_lvs_method``."""
        item = self.settings.get("sorry_server")
        method = self.settings.get("sorry_server_lvs_method")
        if item is None:
            if method is not None:
                self.notes.cannot(method, "there is no sorry_server")
            return None
        real = self._real(Item("real_server", item.args, item.line))
        if real is None:
            return None
        real.forwarding = self._method(method, forwarding)
        rs = self._real_node(real, vport)
        if rs["forwarding"].value == forwarding:
            del rs["forwarding"]
        return node(rs, item.line)

    # -- the check -------------------------------------------------------------------
