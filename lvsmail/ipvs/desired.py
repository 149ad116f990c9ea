"""The IPVS table a cluster asks for: a pure function of the spec, the health verdicts and the operators' weights.

Pure (it imports only the spec and the table model), so the director, the
kernel plan of ``config check`` and the tests build the same table the same
way. It is built service by service: a health transition rebuilds only the
services it touches (``only=``) instead of the whole cluster.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Set
from dataclasses import replace

from lvsmail.ipvs.model import (
    F_PERSISTENT,
    FAMILIES,
    PROTOCOLS,
    DestEntry,
    DestKey,
    DestSettings,
    ServiceEntry,
    ServiceKey,
    ServiceSettings,
    Table,
    Timeouts,
    family_of,
)
from lvsmail.spec import ClusterSpec, RealServerSpec, ServiceSpec

#: A real server of a service: (service name, real server address, port).
Key = tuple[str, str, int]
#: Health as the director sees it: real server → up?
Health = Mapping[Key, bool]
#: The operators' weights (``director weight``/``drain``): real server → weight.
Weights = Mapping[Key, int]

#: Marks used for probe services: "lv" in the high bytes, the probe's index below.
MARK_BASE = 0x6C760000

_NO_OVERRIDES: Weights = {}


def service_key(svc: ServiceSpec) -> ServiceKey:
    """The kernel identity of a service spec."""
    af = FAMILIES[svc.family]
    if svc.fwmark is not None:
        return ServiceKey(af=af, fwmark=svc.fwmark)
    return ServiceKey(af=af, protocol=PROTOCOLS[svc.protocol], addr=svc.vip, port=svc.port)


def service_settings(svc: ServiceSpec) -> ServiceSettings:
    """Scheduler, persistence and persistence netmask as the kernel stores them."""
    af = FAMILIES[svc.family]
    if af == socket.AF_INET:
        netmask = int(ipaddress.IPv4Address(svc.netmask)) if svc.netmask else 0xFFFFFFFF
    else:
        netmask = int(svc.netmask) if svc.netmask else 128
    return ServiceSettings(
        scheduler=svc.scheduler,
        flags=F_PERSISTENT if svc.persistent else 0,
        timeout=svc.persistent,
        netmask=netmask,
    )


def dest_entry(svc: ServiceSpec, rs: RealServerSpec, weight: int | None = None) -> tuple[DestKey, DestEntry]:
    """A real server as the kernel stores it; ``weight`` overrides the configured one (health)."""
    af = family_of(rs.address)
    settings = DestSettings(
        forwarding=rs.forwarding,
        weight=rs.weight if weight is None else weight,
        af=af if af != FAMILIES[svc.family] else 0,
    )
    return DestKey(rs.address, rs.port), DestEntry(settings=settings)


def _up(svc: ServiceSpec, rs: RealServerSpec, health: Health | None) -> bool:
    """A real server with no verdict (no check, or not checked yet) counts as up."""
    return True if health is None else health.get((svc.name, rs.address, rs.port), True)


def service_entry(svc: ServiceSpec, health: Health | None = None, overrides: Weights = _NO_OVERRIDES) -> ServiceEntry:
    """One service's desired entry given the health of its real servers and the operators' weights.

    A down server leaves the service, or stays with weight 0 when the service
    is ``quiescent`` so its established sessions drain (ldirectord's meaning).
    When no real server is up, the ``fallback`` server is installed.
    """
    entry = ServiceEntry(settings=service_settings(svc))
    any_up = False
    for rs in svc.realservers:
        up = _up(svc, rs, health)
        any_up |= up
        if up or svc.quiescent:
            key, dest = dest_entry(svc, rs, None if up else 0)
            entry.dests[key] = dest
    if not any_up and svc.fallback is not None:
        key, dest = dest_entry(svc, svc.fallback)
        entry.dests[key] = dest
    return with_overrides(svc, entry, health, overrides)


def with_overrides(svc: ServiceSpec, entry: ServiceEntry, health: Health | None, overrides: Weights) -> ServiceEntry:
    """``entry`` with the operators' weights on its real servers that are present and up.

    A down server keeps the weight health gave it (absent, or 0 when
    quiescent): an operator's weight never brings a failed server back.
    """
    if not overrides:
        return entry
    for rs in svc.realservers:
        weight = overrides.get((svc.name, rs.address, rs.port))
        dest = entry.dests.get(DestKey(rs.address, rs.port))
        if weight is None or dest is None or not _up(svc, rs, health):
            continue
        dest.settings = replace(dest.settings, weight=weight)
    return entry


def desired_table(spec: ClusterSpec, health: Health | None = None, overrides: Weights = _NO_OVERRIDES,
                  only: Set[ServiceKey] | None = None) -> Table:
    """Every service of the cluster, with real servers as their health and the operators allow (all up if no
    health), plus the probe services that checks through the VIP need.

    ``only`` restricts the table to those services' entries (a health
    transition's scope); each entry is the one the whole table would hold.
    """
    table: Table = {}
    for svc in spec.services:
        key = service_key(svc)
        if only is None or key in only:
            table[key] = service_entry(svc, health, overrides)
    for key, entry in probe_services(spec).items():
        if only is None or key in only:
            table[key] = entry
    return table


def desired_timeouts(spec: ClusterSpec) -> Timeouts | None:
    """The timeouts to set, or None when the file leaves them to the kernel."""
    t = spec.timeouts
    if t.tcp is None and t.tcpfin is None and t.udp is None:
        return None
    return Timeouts(tcp=t.tcp or 0, tcpfin=t.tcpfin or 0, udp=t.udp or 0)


def probe_marks(cluster: ClusterSpec) -> dict[Key, int]:
    """A firewall mark per real server of each ``via: vip`` service, stable for a given file."""
    marks: dict[Key, int] = {}
    for svc in cluster.services:
        if svc.check is None or svc.check.via != "vip":
            continue
        for rs in svc.realservers:
            marks[(svc.name, rs.address, rs.port)] = MARK_BASE + len(marks) + 1
    return marks


def probe_services(cluster: ClusterSpec) -> Table:
    """The IPVS fwmark services that steer each check through the VIP to its one real server."""
    marks = probe_marks(cluster)
    table: Table = {}
    for svc in cluster.services:
        for rs in svc.realservers:
            mark = marks.get((svc.name, rs.address, rs.port))
            if mark is None:
                continue
            dest = DestEntry(DestSettings(forwarding=rs.forwarding, weight=1))
            # Weight 1 whatever the server's health: the probe must reach a down server to see it recover.
            table[ServiceKey(socket.AF_INET, fwmark=mark)] = ServiceEntry(ServiceSettings("rr"),
                                                                         {DestKey(rs.address, rs.port): dest})
    return table
