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

from lvsmail.ipvs.desired import MARK_BASE, Key, probe_marks, probe_services
from lvsmail.net.sysctl import SysctlBackend
from lvsmail.spec import ClusterSpec

# The probe services' marks and table are part of the desired table (lvsmail.ipvs.desired);
# their names stay importable here, where the checks through the VIP use them.
__all__ = ["MARK_BASE", "Key", "prepare_kernel", "probe_marks", "probe_services", "source_towards"]

log = logging.getLogger("lvsmail.health")


def source_towards(address: str) -> str:
    """The director's own address on the path to ``address`` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        return s.getsockname()[0]


def prepare_kernel(cluster: ClusterSpec, sysctl: SysctlBackend) -> list[str]:
    """Turn on ``accept_local`` so replies from the VIP are accepted; return problems left for the admin.

    Every read and write goes through ``sysctl`` (the daemon's backend), so a test's fake sees them
    and nothing here touches the namespace the tests run in.
    """
    if not probe_marks(cluster):
        return []
    problems = []
    try:
        sysctl.write("net.ipv4.conf.all.accept_local", "1")
    except OSError as exc:
        # The backend's SysctlError already names the key and the value ("cannot set ...=1: ...").
        problems.append(exc.strerror or f"cannot set net.ipv4.conf.all.accept_local=1: {exc}")
    try:
        # The kernel validates with the larger of all's and the interface's value (ip-sysctl.rst):
        # strict (1) only when that maximum is 1, so all=1 with an interface at 2 is loose.
        at_all = int(sysctl.read("net.ipv4.conf.all.rp_filter"))
        strict = [name.replace("/", ".") for name in sysctl.children("net.ipv4.conf")
                  if name not in ("all", "default", "lo")
                  and max(at_all, int(sysctl.read(f"net.ipv4.conf.{name}.rp_filter"))) == 1]
    except (OSError, ValueError) as exc:
        strict = []
        problems.append(f"cannot read rp_filter: {getattr(exc, 'strerror', None) or exc}")
    if strict:
        problems.append("strict rp_filter on " + ", ".join(sorted(strict)) + " drops replies of checks through "
                        "the VIP: set net.ipv4.conf.<interface facing the real servers>.rp_filter=2 (and all)")
    for p in problems:
        log.error("health: via vip: %s", p)
    return problems
