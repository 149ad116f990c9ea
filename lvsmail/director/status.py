"""How the IPVS table is shown to people (an ``ipvsadm -Ln --stats`` style table) and to scripts (JSON)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict

from lvsmail.ipvs.model import FWD_IPVSADM, PROTOCOL_NAMES, ServiceKey, Table, Timeouts, hostport


def netmask_text(key: ServiceKey, netmask: int) -> str:
    """Dotted IPv4 mask or IPv6 prefix length, as an administrator writes it."""
    if key.af == socket.AF_INET:
        return str(ipaddress.IPv4Address(netmask))
    return str(netmask)


def as_json(table: Table, timeouts: Timeouts | None = None) -> dict:
    """The table as plain data; stable field names for scripts and tests."""
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
                }
                for dk, d in sorted(entry.dests.items())
            ],
        })
    out: dict = {"services": services}
    if timeouts is not None:
        out["timeouts"] = asdict(timeouts)
    return out


def as_text(table: Table, timeouts: Timeouts | None = None) -> str:
    """ipvsadm's familiar layout with connection counts and traffic counters side by side."""
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
    if timeouts is not None:
        lines.append(f"Timeout (tcp tcpfin udp): {timeouts.tcp} {timeouts.tcpfin} {timeouts.udp}")
    return "\n".join(lines)


def _counts(c) -> str:
    return f"{c.conns:>8} {c.inpkts:>9} {c.outpkts:>9} {_human(c.inbytes):>10} {_human(c.outbytes):>10}"


def _human(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 10000:
            return f"{n}{unit}"
        n //= 1000
    return f"{n}T"
