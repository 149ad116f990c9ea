"""Checks through the VIP (``via: vip``): probe a real server the way client traffic reaches it.

A plain check connects to the real server's own address, so it passes even
when the server has lost the VIP from ``lo``/``tunl0`` and would drop every
client packet. A ``via: vip`` check instead connects to the VIP itself, from
the director, with a socket mark. The director owns one extra IPVS firewall-mark
service per real server (mark → that server alone, same forwarding), so the
kernel sends the probe by DR or TUN exactly as it sends clients; only a server
that accepts packets for the VIP answers. Google Seesaw checks DSR backends
this way.

Two details make the round trip work, found in the lab: the probe is bound to
the director's own address on the path to the real server (else its source
would be the VIP, which the real server answers to itself), and the reply comes
back with the VIP as source — a local address — which Linux drops as a martian
unless ``accept_local`` is on (with ``rp_filter`` not strict on that interface).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from lvsmail.ipvs.model import DestEntry, DestKey, DestSettings, ServiceEntry, ServiceKey, ServiceSettings, Table
from lvsmail.spec import ClusterSpec

log = logging.getLogger("lvsmail.health")

#: Marks used for probe services: "lv" in the high bytes, the probe's index below.
MARK_BASE = 0x6C760000
_SYSCTL = Path("/proc/sys/net/ipv4/conf")

Key = tuple[str, str, int]


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
    """The IPVS fwmark services that steer each probe to its one real server."""
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


def source_towards(address: str) -> str:
    """The director's own address on the path to ``address`` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        return s.getsockname()[0]


def prepare_kernel(cluster: ClusterSpec) -> list[str]:
    """Turn on ``accept_local`` so replies from the VIP are accepted; return problems left for the admin."""
    if not probe_marks(cluster):
        return []
    problems = []
    try:
        (_SYSCTL / "all" / "accept_local").write_text("1")
    except OSError as exc:
        problems.append(f"cannot set net.ipv4.conf.all.accept_local=1: {exc.strerror}")
    try:
        strict_all = (_SYSCTL / "all" / "rp_filter").read_text().strip() == "1"
        strict = [p.name for p in _SYSCTL.iterdir() if p.name not in ("all", "default", "lo")
                  and (strict_all or (p / "rp_filter").read_text().strip() == "1")]
    except OSError as exc:
        strict = []
        problems.append(f"cannot read rp_filter: {exc.strerror}")
    if strict:
        problems.append("strict rp_filter on " + ", ".join(sorted(strict)) + " drops replies of checks through "
                        "the VIP: set net.ipv4.conf.<interface facing the real servers>.rp_filter=2 (and all)")
    for p in problems:
        log.error("health: via vip: %s", p)
    return problems
