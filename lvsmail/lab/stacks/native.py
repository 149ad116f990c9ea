"""lvsmail's own director layer in the lab: ``lvsmail director start`` on each director, one process
that runs the health checks, programs IPVS, runs VRRPv3 for the VIP and the connection sync."""

from __future__ import annotations

import os
import signal

from lvsmail.lab import mailstack
from lvsmail.lab.cluster import lvsmail_argv
from lvsmail.lab.stacks.base import DirectorStack


class LvsmailStack(DirectorStack):
    """``lvsmail director start`` with the lab's cluster file: VRRP preempts (failback), SIGHUP reloads."""

    name = "lvsmail"
    failback = True
    # VRRP is IP protocol 112 (RFC 5798 §5.1.1.4): dropping it makes each director stop hearing the other.
    split_rule = "ip protocol 112"

    def write_configs(self, cluster) -> None:
        """Each director's cluster file: the shared services, its own VRRP priority and API address."""
        for d in cluster.directors:
            d.config.write_text(cluster.cluster_text(d.number))

    def start(self, cluster, d) -> None:
        """``lvsmail director start`` in the director's namespace (its own session)."""
        d.workdir.mkdir(parents=True, exist_ok=True)
        argv = lvsmail_argv("director", "start", "-c", str(d.config), "--repair-interval", "1",
                            "--state-dir", str(d.state_dir))
        d.pid = cluster.popen(f"director{d.number}", d.ns, argv, d.log).pid

    def kill(self, cluster, d) -> None:
        """SIGKILL the director's process group: no VRRP priority 0, no cleanup, VIP and IPVS stay."""
        if d.pid is None:
            raise RuntimeError(f"director{d.number} has no recorded process to kill")
        os.killpg(d.pid, signal.SIGKILL)

    def alive(self, cluster, d) -> bool:
        """Whether ``lvsmail director start`` still runs."""
        return d.pid is not None and mailstack._alive(d.pid)

    def stop(self, cluster, d) -> None:
        """SIGTERM (the daemon gives up the VIP and clears its table), SIGKILL after a grace period."""
        cluster.stop_process(f"director{d.number}")

    def reload(self, cluster) -> None:
        """Rewrite both cluster files and SIGHUP both daemons: each re-reads, diffs and applies."""
        self.write_configs(cluster)
        for d in cluster.directors:
            if d.pid and self.alive(cluster, d):
                os.kill(d.pid, signal.SIGHUP)
