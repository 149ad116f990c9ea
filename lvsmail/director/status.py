"""How the IPVS table is shown to people (an ``ipvsadm -Ln --stats`` style table) and to scripts (JSON)."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import asdict
from pathlib import Path

from lvsmail.ipvs.model import FWD_IPVSADM, PROTOCOL_NAMES, ServiceKey, Table, Timeouts, hostport


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
    for path in sorted(Path(state_dir).glob("*.health.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours: status shows the kernel alone
        for e in data.get("realservers", []):
            out[(e["service"], e["address"], e["port"])] = e
    return out


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


def as_json(table: Table, timeouts: Timeouts | None = None, health: Health | None = None) -> dict:
    """The table as plain data; stable field names for scripts and tests."""
    health = health or {}
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
                }
                for dk, d in sorted(entry.dests.items())
            ] + [
                {"address": addr, "port": port, "forwarding": None, "weight": None, "active": 0, "inactive": 0,
                 "persistent": 0, "stats": None, "health": _health_of(str(key), addr, port, health, None)}
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


def as_text(table: Table, timeouts: Timeouts | None = None, health: Health | None = None) -> str:
    """ipvsadm's familiar layout with connection counts and traffic counters side by side.

    With health from a running director, each real server gets a line with its
    badge, since when, last check latency and configured weight, plus the last
    failure reason; checked servers removed from the kernel are listed too.
    """
    health = health or {}
    lines = [
        f"{'Prot LocalAddress:Port Scheduler Flags':<52} {'Conns':>8} {'InPkts':>9} {'OutPkts':>9} {'InBytes':>10} {'OutBytes':>10}",
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
            )
            lines += _health_lines(_health_of(str(key), dk.addr, dk.port, health, d.settings.weight))
        for addr, port in _absent(key, entry, health):
            lines.append(f"  -> {hostport(addr, port):<24} {'-':<7} {'-':>6}")
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
    line = (f"     {h['health']} for {age}, {h['check']} check {latency}{tls},"
            f" weight {h['configured_weight']} configured / {'-' if h['effective_weight'] is None else h['effective_weight']} in kernel")
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
