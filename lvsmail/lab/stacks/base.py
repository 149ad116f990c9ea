"""The director layer of the lab pair as one interface, so the same cluster and chaos run can
measure lvsmail against the stacks administrators run today (heartbeat + ldirectord, keepalived).

Everything that is not the director layer — topology, real servers, the VIP holder as the
kernel shows it, the IPVS table, the clients, the accounting — stays in the cluster and the
chaos run; a stack only says how its own daemons are configured, started, crashed, stopped,
reloaded and cut off from each other.
"""

from __future__ import annotations

import subprocess


class DirectorStack:
    """One director layer of the lab pair: how it is configured, started, killed, reloaded and split."""

    #: The name ``--stack`` takes: "lvsmail" | "seed" | "keepalived".
    name: str = ""
    #: True when director 1 takes the VIP back after it returns (lvsmail and keepalived: preempt;
    #: seed: heartbeat's auto_failback off -> False).
    failback: bool = True
    #: nft match that drops the stack's failover traffic between the directors, e.g. "ip protocol 112"
    #: (VRRP) or "udp dport 694" (heartbeat).
    split_rule: str = ""
    #: True when the standby director keeps the full IPVS table too (lvsmail, keepalived: both check);
    #: False when the table is a resource of the VIP holder (the seed: ldirectord runs under heartbeat).
    table_on_standby: bool = True

    def not_applicable(self, kind: str) -> str | None:
        """None when the chaos fault ``kind`` applies to this stack; else why it is "n/a" for it."""
        return None

    def write_configs(self, cluster) -> None:
        """Write every director's own files under ``cluster.work / f"dir{n}"`` (the stack's own format)."""
        raise NotImplementedError

    def start(self, cluster, d) -> None:
        """Start the director layer of DirectorProc ``d`` in ``d.ns`` through ``cluster.popen`` (own
        session, pids recorded); set ``d.pid`` to the process whose group a crash kills."""
        raise NotImplementedError

    def kill(self, cluster, d) -> None:
        """Crash director ``d``: SIGKILL every daemon of its layer; the VIP and the kernel's IPVS table
        stay behind, as with a real crash."""
        raise NotImplementedError

    def alive(self, cluster, d) -> bool:
        """Whether director ``d``'s layer is running."""
        raise NotImplementedError

    def stop(self, cluster, d) -> None:
        """For ``lab down``: stop everything of director ``d``, daemonized children too."""
        raise NotImplementedError

    def reload(self, cluster) -> None:
        """Rewrite each director's own file from the cluster's state (``cluster.weights``) and reload
        the stack its own way (lvsmail: SIGHUP; keepalived: SIGHUP; ldirectord: its reload)."""
        raise NotImplementedError


def apply_kernel_profile(cluster, d) -> dict[str, str]:
    """Set the cluster file's ``kernel:`` IPVS sysctls in director ``d``'s namespace, as an administrator
    of an anchor stack would with sysctl.d (``lvsmail director start`` sets them itself), so every stack
    runs with the same kernel behaviour; returns what was set. OSError when a key cannot be written."""
    from lvsmail.config import parse_cluster
    from lvsmail.director.kernel_profile import SYSCTLS, wanted
    from lvsmail.net import netns
    from lvsmail.net.sysctl import ProcSysctl, SysctlError

    spec = parse_cluster(cluster.cluster_text(d.number), source=str(d.config))
    values = {SYSCTLS[name]: str(value) for name, value in wanted(spec).items()}
    if any(key.startswith("net.ipv4.vs.") for key in values):
        # The net.ipv4.vs keys exist once ip_vs is loaded (lvsmail's director loads it through netlink).
        try:
            ProcSysctl().children("net.ipv4.vs")
        except SysctlError:
            subprocess.run(["modprobe", "ip_vs"], check=True, capture_output=True, timeout=120)

    def write() -> None:
        sysctl = ProcSysctl()
        for key, value in values.items():
            sysctl.write(key, value)

    netns.run_in_netns(d.ns, write)
    return values
