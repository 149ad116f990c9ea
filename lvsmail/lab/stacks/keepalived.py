"""keepalived as the lab pair's director layer: what most LVS sites run today, measured in the same run.

Each director runs Debian 12's keepalived 2.2.7 in its namespace with a
keepalived.conf generated from that director's cluster file by
``lvsmail config export-keepalived`` (the same VRRPv3 instance — vrid,
priority, advert interval, preemption, tracked link —, the same virtual
servers with scheduler and persistence, SMTP_CHECK / HTTP_GET / TCP_CHECK, and
``lvs_sync_daemon`` on the real servers' link). keepalived has no registration
API, so the real servers are listed statically, as the cluster file lists them.

keepalived runs in the foreground (``--dont-fork``) as the session leader that
``cluster.popen`` made, with its VRRP and checker children in the same process
group and each process's pid file under the director's own directory (two
keepalived on one machine must not share /run/keepalived.pid).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lvsmail.lab import mailstack
from lvsmail.lab.stacks.base import DirectorStack, apply_kernel_profile

KEEPALIVED = "/usr/sbin/keepalived"
#: The three processes of one keepalived: the parent (which respawns the others), VRRP and the checkers.
PID_FILES = ("keepalived.pid", "vrrp.pid", "checkers.pid")


class KeepalivedError(RuntimeError):
    """keepalived could not be configured or did not do what was asked; the message says what and where."""


def export_conf(cluster_text: str, source: str, router_id: str) -> tuple[str, list[str]]:
    """keepalived.conf text for one director's cluster file, and what keepalived cannot express.

    The one call site of the exporter: the configuration always comes from the cluster file
    (``lvsmail config import-keepalived`` reads it back to the same services).
    """
    from lvsmail.config import parse_cluster
    from lvsmail.interop.export_keepalived import export_keepalived

    result = export_keepalived(parse_cluster(cluster_text, source=source), router_id=router_id)
    return result.text, list(result.warnings)


class KeepalivedStack(DirectorStack):
    """Two keepalived directors: VRRPv3 with preemption (failback), SIGHUP reloads, IPVS sync on eth1."""

    name = "keepalived"
    failback = True
    # VRRP is IP protocol 112 (RFC 5798 §5.1.1.4): dropping it makes each director stop hearing the other.
    split_rule = "ip protocol 112"

    def not_applicable(self, kind: str) -> str | None:
        """join_leave goes through lvsmail's registration API, which keepalived has no counterpart of."""
        if kind == "join_leave":
            return "no registration API: keepalived lists its real servers statically in keepalived.conf"
        return None

    # -- files -------------------------------------------------------------------------------------

    @staticmethod
    def conf(d) -> Path:
        """Director ``d``'s keepalived.conf."""
        return d.workdir / "keepalived.conf"

    @staticmethod
    def pid_file(d, which: str) -> Path:
        """One of ``d``'s pid files (``PID_FILES``)."""
        return d.workdir / which

    def write_configs(self, cluster) -> None:
        """Per director: its cluster file (the source) and the keepalived.conf exported from it.

        What keepalived cannot express (registration, the real servers' mail settings, ...) is
        written beside it, one line per setting, and as ``! lvsmail:`` comments in the file.
        """
        for d in cluster.directors:
            d.workdir.mkdir(parents=True, exist_ok=True)
            text = cluster.cluster_text(d.number)
            d.config.write_text(text)
            conf, warnings = export_conf(text, str(d.config), f"loadb{d.number}")
            tmp = self.conf(d).with_suffix(".tmp")
            tmp.write_text(conf)
            os.replace(tmp, self.conf(d))  # a reload never reads half a file
            (d.workdir / "keepalived.export-warnings").write_text("".join(w + "\n" for w in warnings))

    # -- processes ---------------------------------------------------------------------------------

    def argv(self, d) -> list[str]:
        """keepalived in the foreground, logging to its output, with ``d``'s own file and pid files."""
        return [KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--no_bfd",
                "--use-file", str(self.conf(d)), "--pid", str(self.pid_file(d, "keepalived.pid")),
                "--vrrp_pid", str(self.pid_file(d, "vrrp.pid")),
                "--checkers_pid", str(self.pid_file(d, "checkers.pid"))]

    def start(self, cluster, d) -> None:
        """The kernel profile's sysctls (as sysctl.d would), then keepalived in ``d``'s namespace."""
        d.workdir.mkdir(parents=True, exist_ok=True)
        apply_kernel_profile(cluster, d)
        for which in PID_FILES:  # a crashed keepalived's files would make the new one think it runs
            self.pid_file(d, which).unlink(missing_ok=True)
        d.pid = cluster.popen(f"director{d.number}", d.ns, self.argv(d), d.log).pid

    def processes(self, d) -> list[int]:
        """The live processes of ``d``'s keepalived: the parent and the children its pid files name."""
        pids = [d.pid] if d.pid else []
        for which in PID_FILES[1:]:
            try:
                pid = int(self.pid_file(d, which).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # not written yet, or removed by a clean stop
            if pid not in pids and _is_keepalived(pid):
                pids.append(pid)
        return [p for p in pids if mailstack._alive(p)]

    def kill(self, cluster, d) -> None:
        """SIGKILL keepalived's process group and any child a pid file names: no VRRP priority 0
        advert, no cleanup, the VIP and the IPVS table stay behind."""
        if d.pid is None:
            raise KeepalivedError(f"director{d.number} has no recorded keepalived to kill")
        children = self.processes(d)
        os.killpg(d.pid, signal.SIGKILL)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # died with the group

    def alive(self, cluster, d) -> bool:
        """Whether ``d``'s keepalived parent runs (it respawns a child that dies)."""
        return d.pid is not None and mailstack._alive(d.pid)

    def stop(self, cluster, d) -> None:
        """SIGTERM (keepalived gives up the VIP and removes its virtual servers), then SIGKILL what is left."""
        children = self.processes(d)
        cluster.stop_process(f"director{d.number}")
        deadline = time.monotonic() + 10
        while any(mailstack._alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in children:
            if mailstack._alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def reload(self, cluster) -> None:
        """Rewrite each keepalived.conf from the cluster file and SIGHUP keepalived (it re-reads and
        applies the differences: a changed weight is edited in place)."""
        self.write_configs(cluster)
        for d in cluster.directors:
            if not self.alive(cluster, d):
                raise KeepalivedError(f"director{d.number}'s keepalived is not running: nothing to reload")
            os.kill(d.pid, signal.SIGHUP)


def _is_keepalived(pid: int) -> bool:
    """Whether ``pid`` is a keepalived process (a pid file can outlive its process, and pids recycle)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "keepalived"
    except OSError:
        return False


def config_test(conf: Path) -> subprocess.CompletedProcess:
    """``keepalived --config-test`` on ``conf``: keepalived's own parser's verdict (exit 0 when clean)."""
    return subprocess.run([KEEPALIVED, "--config-test", "--use-file", str(conf)], capture_output=True, text=True,
                          timeout=60)
