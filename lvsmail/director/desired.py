"""From a validated cluster spec to the IPVS table it asks for."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

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


#: Health as the director sees it: (service name, real server address, port) → up?
Health = Mapping[tuple[str, str, int], bool]


def service_entry(svc: ServiceSpec, health: Health | None = None) -> ServiceEntry:
    """One service's desired entry given the health of its real servers.

    A real server with no health verdict (no check, or not checked yet) counts
    as up. A down server leaves the service, or stays with weight 0 when the
    service is ``quiescent`` so its established sessions drain (ldirectord's
    meaning). When no real server is up, the ``fallback`` server is installed.
    """
    entry = ServiceEntry(settings=service_settings(svc))
    any_up = False
    for rs in svc.realservers:
        up = True if health is None else health.get((svc.name, rs.address, rs.port), True)
        any_up |= up
        if up or svc.quiescent:
            key, dest = dest_entry(svc, rs, None if up else 0)
            entry.dests[key] = dest
    if not any_up and svc.fallback is not None:
        key, dest = dest_entry(svc, svc.fallback)
        entry.dests[key] = dest
    return entry


def desired_table(spec: ClusterSpec, health: Health | None = None) -> Table:
    """Every service of the cluster, with real servers as their health allows (all up if no health),
    plus the probe services that checks through the VIP need."""
    from lvsmail.health.via_vip import probe_services

    table = {service_key(svc): service_entry(svc, health) for svc in spec.services}
    table.update(probe_services(spec))
    return table


def desired_timeouts(spec: ClusterSpec) -> Timeouts | None:
    """The timeouts to set, or None when the file leaves them to the kernel."""
    t = spec.timeouts
    if t.tcp is None and t.tcpfin is None and t.udp is None:
        return None
    return Timeouts(tcp=t.tcp or 0, tcpfin=t.tcpfin or 0, udp=t.udp or 0)
