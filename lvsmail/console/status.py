"""How the IPVS table is shown to people (an ``ipvsadm -Ln --stats`` style table) and to scripts (JSON)."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import asdict

from lvsmail.ipvs.model import FWD_IPVSADM, PROTOCOL_NAMES, ServiceKey, Table, Timeouts, hostport
from lvsmail.statefiles import StateDir


def netmask_text(key: ServiceKey, netmask: int) -> str:
    """Dotted IPv4 mask or IPv6 prefix length, as an administrator writes it."""
    if key.af == socket.AF_INET:
        return str(ipaddress.IPv4Address(netmask))
    return str(netmask)


#: Health published by running directors: (service key text, address, port) → entry.
Health = dict[tuple[str, str, int], dict]


def read_health(state_dir: str) -> Health:
    """Health of every real server from the running directors' files (empty when none run)."""
    out: Health = {}
    for _stem, path in StateDir.each(state_dir, "health"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours: status shows the kernel alone
        for e in data.get("realservers", []):
            out[(e["service"], e["address"], e["port"])] = e
    return out


#: Real servers that joined through the registration API: (service key text, address, port) → entry.
Joined = dict[tuple[str, str, int], dict]


def read_joined(state_dir: str) -> Joined:
    """Joined (not static) real servers, as the running directors publish them with their health."""
    out: Joined = {}
    for _stem, path in StateDir.each(state_dir, "health"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: every server shows as static until the next status
        for e in data.get("joined", []):
            out[(e["service"], e["address"], e["port"])] = e
    return out


def _member(service: str, addr: str, port: int, joined: Joined) -> str:
    """``joined`` for a real server that registered itself, ``static`` for one from the cluster file."""
    return "joined" if (service, addr, port) in joined else "static"


def _joined_mark(service: str, addr: str, port: int, joined: Joined) -> str:
    """The text-table marker of a joined real server (static ones carry none, as in ipvsadm)."""
    e = joined.get((service, addr, port))
    if e is None:
        return ""
    name = f" {e['member_name']}" if e.get("member_name") else ""
    return f"  [joined{name}{', draining' if e.get('drained') else ''}]"


def _health_of(service: str, addr: str, port: int, health: Health, effective: int | None) -> dict | None:
    """Health badge and details for one real server, or None if it is not checked."""
    e = health.get((service, addr, port))
    if e is None:
        return None
    badge = "up" if e["up"] else ("quiescent" if e["quiescent"] and effective == 0 else "down")
    return {
        "health": badge, "since": e["since"], "latency": e["latency"], "last_failure": e["last_failure"],
        "configured_weight": e["weight"], "effective_weight": effective, "check": e["check"],
        "verify": e.get("verify", True),
    }


def as_json(table: Table, timeouts: Timeouts | None = None, health: Health | None = None,
            joined: Joined | None = None) -> dict:
    """The table as plain data; stable field names for scripts and tests."""
    health = health or {}
    joined = joined or {}
    services = []
    for key in sorted(table):
        entry = table[key]
        s = entry.settings
        services.append({
            "key": str(key),
            "family": "inet6" if key.af == socket.AF_INET6 else "inet",
            "protocol": PROTOCOL_NAMES.get(key.protocol) if not key.fwmark else None,
            "address": key.addr or None,
            "port": key.port if not key.fwmark else None,
            "fwmark": key.fwmark,
            "scheduler": s.scheduler,
            "persistent": s.timeout if s.persistent else 0,
            "netmask": netmask_text(key, s.netmask),
            "stats": asdict(entry.counters),
            "realservers": [
                {
                    "address": dk.addr,
                    "port": dk.port,
                    "forwarding": d.settings.forwarding,
                    "weight": d.settings.weight,
                    "active": d.active,
                    "inactive": d.inactive,
                    "persistent": d.persistent,
                    "stats": asdict(d.counters),
                    "health": _health_of(str(key), dk.addr, dk.port, health, d.settings.weight),
                    "member": _member(str(key), dk.addr, dk.port, joined),
                    "drained": joined.get((str(key), dk.addr, dk.port), {}).get("drained", False),
                }
                for dk, d in sorted(entry.dests.items())
            ] + [
                {"address": addr, "port": port, "forwarding": None, "weight": None, "active": 0, "inactive": 0,
                 "persistent": 0, "stats": None, "health": _health_of(str(key), addr, port, health, None),
                 "member": _member(str(key), addr, port, joined),
                 "drained": joined.get((str(key), addr, port), {}).get("drained", False)}
                for addr, port in _absent(key, entry, health)
            ],
        })
    out: dict = {"services": services}
    if timeouts is not None:
        out["timeouts"] = asdict(timeouts)
    return out


def _absent(key, entry, health: Health) -> list[tuple[str, int]]:
    """Checked real servers of this service that are not in the kernel (down, not quiescent)."""
    from lvsmail.ipvs.model import DestKey

    return sorted((a, p) for (svc, a, p) in health if svc == str(key) and DestKey(a, p) not in entry.dests)


def as_text(table: Table, timeouts: Timeouts | None = None, health: Health | None = None,
            joined: Joined | None = None) -> str:
    """ipvsadm's familiar layout with connection counts and traffic counters side by side.

    With health from a running director, each real server gets a line with its
    badge, since when, last check latency and configured weight, plus the last
    failure reason; checked servers removed from the kernel are listed too.
    """
    health = health or {}
    joined = joined or {}
    lines = [
        f"{'Prot LocalAddress:Port Scheduler Flags':<52} {'Conns':>8} {'InPkts':>9} {'OutPkts':>9}"
        f" {'InBytes':>10} {'OutBytes':>10}",
        f"  -> {'RemoteAddress:Port':<24} {'Forward':<7} {'Weight':>6} {'Active':>6} {'InAct':>6}"
        f" {'Conns':>8} {'InPkts':>9} {'OutPkts':>9} {'InBytes':>10} {'OutBytes':>10}",
    ]
    for key in sorted(table):
        entry = table[key]
        s = entry.settings
        head = str(key) + f" {s.scheduler}"
        if s.persistent:
            head += f" persistent {s.timeout}"
            full = 0xFFFFFFFF if key.af == socket.AF_INET else 128
            if s.netmask != full:
                head += f" mask {netmask_text(key, s.netmask)}"
        lines.append(f"{head:<52} {_counts(entry.counters)}")
        for dk, d in sorted(entry.dests.items()):
            lines.append(
                f"  -> {hostport(dk.addr, dk.port):<24} {FWD_IPVSADM[d.settings.forwarding]:<7} {d.settings.weight:>6}"
                f" {d.active:>6} {d.inactive:>6} {_counts(d.counters)}"
                + _joined_mark(str(key), dk.addr, dk.port, joined)
            )
            lines += _health_lines(_health_of(str(key), dk.addr, dk.port, health, d.settings.weight))
        for addr, port in _absent(key, entry, health):
            lines.append(f"  -> {hostport(addr, port):<24} {'-':<7} {'-':>6}"
                         + _joined_mark(str(key), addr, port, joined))
            lines += _health_lines(_health_of(str(key), addr, port, health, None))
    if timeouts is not None:
        lines.append(f"Timeout (tcp tcpfin udp): {timeouts.tcp} {timeouts.tcpfin} {timeouts.udp}")
    return "\n".join(lines)


def _health_lines(h: dict | None) -> list[str]:
    if h is None:
        return []
    age = _age(time.time() - h["since"])
    latency = "-" if h["latency"] is None else f"{h['latency'] * 1000:.0f} ms"
    tls = "" if h["verify"] else ", TLS not verified"
    effective = "-" if h["effective_weight"] is None else h["effective_weight"]
    line = (f"     {h['health']} for {age}, {h['check']} check {latency}{tls},"
            f" weight {h['configured_weight']} configured / {effective} in kernel")
    out = [line]
    if h["last_failure"]:
        out.append(f"     last failure: {h['last_failure']}")
    return out


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _counts(c) -> str:
    return f"{c.conns:>8} {c.inpkts:>9} {c.outpkts:>9} {_human(c.inbytes):>10} {_human(c.outbytes):>10}"


def _human(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 10000:
            return f"{n}{unit}"
        n //= 1000
    return f"{n}T"


# -- kernel profile and connection sync ------------------------------------------------

def read_profiles(state_dir: str) -> list[dict]:
    """Kernel profiles and sync roles published by the running directors (empty when none run)."""
    out = []
    for _stem, path in StateDir.each(state_dir, "kernel"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced right now: status shows the kernel's values without expectations
    return out


def wanted_from(profiles: list[dict]) -> dict[str, int]:
    """The sysctl values the running directors' profiles ask for (merged; one director is the usual case)."""
    want: dict[str, int] = {}
    for p in profiles:
        want.update(p.get("wanted") or {})
    return want


def profile_json(rows, daemons, profiles: list[dict]) -> dict:
    """The ``kernel`` and ``sync`` parts of ``status --json``: each sysctl with ``ok``, daemons, roles."""
    return {
        "kernel": {"sysctls": [r.as_json() for r in rows], "ok": all(r.ok for r in rows)},
        "sync": {
            "daemons": [{"state": d.state, "interface": d.interface, "syncid": d.syncid, "maxlen": d.maxlen,
                         "group": d.group, "port": d.port, "ttl": d.ttl} for d in daemons],
            "roles": [dict(p["sync"], cluster=p.get("cluster")) for p in profiles if p.get("sync")],
        },
    }


def profile_text(rows, daemons, profiles: list[dict]) -> str:
    """The kernel profile and sync daemons for people; a value the profile disagrees with is flagged WRONG."""
    lines = ["Kernel profile:"]
    for r in rows:
        value = "(absent)" if r.value is None else r.value
        if r.wanted is None:
            note = "not managed"
        elif r.ok:
            note = "ok"
        else:
            note = f"WRONG, profile wants {r.wanted}"
        lines.append(f"  {r.key:<40} {value:<9} {note}")
    lines.append("Connection sync:")
    if not daemons:
        lines.append("  no sync daemon running")
    for d in daemons:
        lines.append(f"  {d.state:<6} on {d.interface} syncid {d.syncid} group {d.group} port {d.port}"
                     f" ttl {d.ttl} maxlen {d.maxlen}")
    for p in profiles:
        s = p.get("sync")
        if s:
            err = f", last error: {s['last_error']}" if s.get("last_error") else ""
            lines.append(f"  director {p.get('cluster')}: role {s['role']} for {_age(time.time() - s['since'])}"
                         f" (configured {s['configured_role']}), {s['transitions']} transitions{err}")
    return "\n".join(lines)


# -- director failover (VRRP) -------------------------------------------------------------

def read_failover(state_dir: str, stem: str | None = None) -> list[dict]:
    """VRRP instances published by the running directors (only ``stem``'s file when given)."""
    out = []
    for _stem, path in StateDir.each(state_dir, "failover", stem):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced right now: the next status shows it
    return out


def failover_json(published: list[dict]) -> list[dict]:
    """The ``failover`` part of ``status --json``: one entry per instance, with its cluster."""
    return [dict(inst, cluster=p.get("cluster")) for p in published for inst in p.get("instances", [])]


def failover_text(published: list[dict]) -> str:
    """One line per VRRP instance (role, priority, master, since), then its faults and held resources."""
    lines = ["Failover (VRRPv3):"]
    for inst in failover_json(published):
        since = "-" if inst.get("since") is None else _age(time.time() - inst["since"])
        prio = str(inst["priority"])
        if inst["priority"] != inst["configured_priority"]:
            prio += f" (configured {inst['configured_priority']})"
        lines.append(
            f"  {inst['name']} VRID {inst['vrid']} on {inst['interface']}: {inst['role'].upper()} for {since},"
            f" priority {prio}, master {inst['master'] or '-'}, {inst['transitions']} transitions,"
            f" VIPs {' '.join(inst['vips'])}")
        for fault in inst.get("faults") or []:
            lines.append(f"     fault: {fault}")
        if inst.get("held"):
            lines.append(f"     holds: {', '.join(inst['held'])}")
    if len(lines) == 1:
        lines.append("  no VRRP instance published (no director with failover: runs here)")
    return "\n".join(lines)
