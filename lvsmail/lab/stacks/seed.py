"""The seed deployment's own director layer in the lab: heartbeat 3 (haresources mode, no CRM) and ldirectord.

Each director runs Debian 12's heartbeat 3.0.6 with the seed's ``ha.cf`` and ``haresources``
(keepalive 2, deadtime 10, initdead 120, udpport 694, ``bcast eth0``, auto_failback off, a ping
node, ``ipfail``): the node that takes the resource group raises the VIP with ``IPaddr2``, starts
ldirectord with the seed's ``ldirectord.cf`` adapted to the lab's addresses and services, and turns
its IPVS connection-sync daemon into the master (``LVSSyncDaemonSwap``, which Debian's heartbeat no
longer ships: the lab provides its own, written from the documented behaviour).

Heartbeat reads fixed paths and takes ``uname -n`` as its node name, so the two directors of one
lab machine each run in their network namespace plus a mount and UTS namespace of their own: their
``/etc/ha.d``, ``/var/lib/heartbeat`` and ``/run`` are bind mounts of directories under the
director's work directory, and their host names are the seed's ``loadb1`` and ``loadb2``. The mount
namespace is also how the lab knows a director's processes: heartbeat and ldirectord daemonize into
sessions of their own, but every process they start stays in that namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lvsmail.lab.stacks.base import DirectorStack, apply_kernel_profile
from lvsmail.lab.topology import DIRECTOR2_FRONT, DIRECTOR_FRONT, GW_FRONT, SYNC_ID

#: The seed's heartbeat node names (``uname -n`` of director 1 and director 2).
NODES = ("loadb1", "loadb2")
#: The seed's ha.cf timing: heartbeats every 2 s, a peer dead after 10 s silence, 120 s for the first
#: peer at start-up (it only delays a director that starts while its peer is down).
KEEPALIVE, DEADTIME, INITDEAD = 2, 10, 120
UDPPORT = 694
#: The lab's files: the resource script, the director start-up script.
FILES = Path(__file__).with_name("seed_files")
#: Debian 12's stock heartbeat directory (harc, shellfuncs, rc.d, resource.d), copied for each director.
STOCK_HA_D = Path("/etc/ha.d")
STOCK_VAR_LIB = Path("/var/lib/heartbeat")
IPFAIL = "/usr/libexec/heartbeat/ipfail"
LDIRECTORD = "/usr/sbin/ldirectord"
#: ldirectord's configuration, named after the file as the seed's haresources names it.
LDIRECTORD_CF = "ldirectord.cf"
#: How long a starting director waits for the lab to wire its links (the directors start first).
WIRE_WAIT = 600
#: How long ``stop`` lets heartbeat give up its resources before the rest is SIGKILLed.
STOP_GRACE = 45.0


class SeedStackError(RuntimeError):
    """The seed stack could not do what was asked; the message names the director and its log."""


# -- the director's files ----------------------------------------------------------------------------


def ha_cf(log_dir: Path, ping: str, initdead: int = INITDEAD) -> str:
    """The seed's ha.cf with the lab's ping node; the log directives are the lab's (the seed logged to syslog)."""
    return "\n".join([
        "# The seed's ha.cf (heartbeat 3, haresources mode), in the lvsmail lab.",
        "# Lab additions: the log files (the seed used syslog), the ping node is the lab's front gateway,",
        "# ipfail's path is Debian 12's.",
        f"logfile {log_dir / 'heartbeat.log'}",
        f"debugfile {log_dir / 'heartbeat-debug.log'}",
        f"keepalive {KEEPALIVE}",
        f"deadtime {DEADTIME}",
        f"initdead {initdead}",
        f"udpport {UDPPORT}",
        "bcast eth0",
        "auto_failback off",
        *(f"node {n}" for n in NODES),
        f"ping {ping}",
        f"respawn hacluster {IPFAIL}",
        "",
    ])


def haresources(vip: str, prefix: int, interface: str, broadcast: str) -> str:
    """The seed's haresources: loadb1's group of the VIP, ldirectord and the sync daemon's master role.

    The thesis prints the second resource as ``directord::ldirectord.cf``; heartbeat's resource (and the
    script Debian installs in resource.d) is ``ldirectord``, which is what the seed must have run.
    """
    return (f"loadb1 IPaddr2::{vip}/{prefix}/{interface}/{broadcast} "
            f"ldirectord::{LDIRECTORD_CF} LVSSyncDaemonSwap::master\n")


def authkeys(secret: str) -> str:
    """authkeys signing heartbeat's packets with SHA-1 under a shared secret (heartbeat requires the file)."""
    if not secret or any(c.isspace() for c in secret):
        raise ValueError("the authkeys secret must be one non-empty word")
    return f"auth 1\n1 sha1 {secret}\n"


def sync_swap_script(interface: str, syncid: int) -> str:
    """The lab's LVSSyncDaemonSwap resource script for the cluster's sync interface and id."""
    if not interface or not interface.replace("-", "").replace(".", "").isalnum():
        raise ValueError(f"bad sync interface name {interface!r}")
    if not 0 <= syncid <= 255:
        raise ValueError(f"syncid must be 0..255, not {syncid}")
    text = (FILES / "LVSSyncDaemonSwap").read_text()
    return text.replace("@SYNC_INTERFACE@", interface).replace("@SYNC_ID@", str(syncid))


def ldirectord_cf(cluster, number: int, log: Path) -> str:
    """ldirectord.cf for director ``number``: ``lvsmail config export-ldirectord`` of its cluster file.

    The exporter's notes on what ldirectord.cf cannot carry (failover, sync, registration ...) are
    comments in the file: here heartbeat and the lab's own resource script carry them.
    """
    from lvsmail.config.loader import parse_cluster
    from lvsmail.interop.export_ldirectord import export_ldirectord

    spec = parse_cluster(cluster.cluster_text(number), f"director{number} cluster file")
    return export_ldirectord(spec, logfile=str(log)).text


# -- processes of one director ------------------------------------------------------------------------


def _mntns(path: Path) -> str | None:
    """The mount namespace id a director's start-up recorded (``mnt:[N]``), or None before its first start."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _pid_mntns(pid: int) -> str | None:
    """The mount namespace of a live process, or None when it is gone (or a zombie) or not ours to read."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        # Only a process this root cannot inspect (a container's init, say): never one the lab started.
        return None


def _members(mntns: str) -> list[int]:
    """Every live process in the mount namespace ``mntns``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _pid_mntns(int(entry.name)) == mntns:
            found.append(int(entry.name))
    return found


def _pidfile_pid(path: Path, mntns: str | None) -> int | None:
    """The pid in a pid file when that process lives in the director's mount namespace, else None."""
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if mntns is not None and _pid_mntns(pid) == mntns else None


class SeedStack(DirectorStack):
    """heartbeat 3.0.6 (haresources) + ldirectord 4.12 on each director, with the seed's files and timing."""

    name = "seed"
    #: auto_failback off: after director 1 returns, the resources stay where they are.
    failback = False
    #: heartbeat's own UDP port (ha.cf udpport): dropping it silences each director to the other.
    split_rule = f"udp dport {UDPPORT}"
    #: ldirectord is a heartbeat resource: only the director holding the VIP runs it, so the standby's
    #: IPVS table stays empty until it takes over (lvsmail and keepalived check on both directors).
    table_on_standby = False

    def __init__(self, initdead: int = INITDEAD) -> None:
        self.initdead = initdead

    def not_applicable(self, kind: str) -> str | None:
        """join_leave needs a registration API, which heartbeat + ldirectord do not have."""
        if kind == "join_leave":
            return "no registration API: real servers are listed statically in ldirectord.cf"
        return None

    # -- paths --------------------------------------------------------------------------------------

    @staticmethod
    def ha_d(d) -> Path:
        """The director's /etc/ha.d."""
        return d.workdir / "etc-ha.d"

    @staticmethod
    def run_dir(d) -> Path:
        """The director's /run (fresh at each start, as after a boot)."""
        return d.workdir / "run"

    @staticmethod
    def mntns_file(d) -> Path:
        """Where the start-up script records the director's mount namespace."""
        return d.workdir / "mntns"

    def _mntns(self, d) -> str | None:
        return _mntns(self.mntns_file(d))

    def heartbeat_pid(self, d) -> int | None:
        """heartbeat's master control process of director ``d`` (from its pid file), or None."""
        return _pidfile_pid(self.run_dir(d) / "heartbeat.pid", self._mntns(d))

    def ldirectord_pid(self, d) -> int | None:
        """ldirectord of director ``d`` (running only where heartbeat gave it the resources), or None."""
        return _pidfile_pid(self.run_dir(d) / f"ldirectord.{LDIRECTORD_CF}.pid", self._mntns(d))

    # -- the interface ------------------------------------------------------------------------------

    def write_configs(self, cluster) -> None:
        """Each director's /etc/ha.d (Debian's stock files plus the seed's) and its /var/lib/heartbeat."""
        secret = secrets.token_hex(16)  # one key for the pair: both must sign alike
        topo = cluster.topo
        for d in cluster.directors:
            etc = self.ha_d(d)
            etc.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(STOCK_HA_D, etc, symlinks=True, dirs_exist_ok=True)
            (etc / "ha.cf").write_text(ha_cf(d.workdir, GW_FRONT, self.initdead))
            (etc / "haresources").write_text(haresources(topo.vip, 24, "eth0", _broadcast(topo.vip, 24)))
            keys = etc / "authkeys"
            keys.write_text(authkeys(secret))
            os.chmod(keys, 0o600)  # heartbeat refuses an authkeys file others can read
            script = etc / "resource.d" / "LVSSyncDaemonSwap"
            script.write_text(sync_swap_script("eth1", SYNC_ID))
            os.chmod(script, 0o755)
            self._write_ldirectord(cluster, d)
            _copy_dirs(STOCK_VAR_LIB, d.workdir / "var-lib-heartbeat")

    def _write_ldirectord(self, cluster, d) -> None:
        """Write director ``d``'s ldirectord.cf atomically (a reload must never read half a file)."""
        path = self.ha_d(d) / LDIRECTORD_CF
        tmp = path.with_suffix(".tmp")
        tmp.write_text(ldirectord_cf(cluster, d.number, d.workdir / "ldirectord.log"))
        os.replace(tmp, path)

    def start(self, cluster, d) -> None:
        """The kernel profile's sysctls (as sysctl.d would), then heartbeat in ``d.ns`` and its own mount and
        UTS namespace, via the start-up script; d.pid is heartbeat's master control process (the script
        execs it in the foreground)."""
        mntns = self._mntns(d)
        if mntns is not None and _members(mntns):
            raise SeedStackError(f"director{d.number} still runs (processes {_members(mntns)}): stop or kill it first")
        apply_kernel_profile(cluster, d)
        run = self.run_dir(d)
        if run.exists():
            shutil.rmtree(run)
        _fresh_run(run, cluster.work)
        self.mntns_file(d).unlink(missing_ok=True)
        front = DIRECTOR_FRONT if d.number == 1 else DIRECTOR2_FRONT
        argv = ["unshare", "--mount", "--uts", "--propagation", "private",
                "sh", str(FILES / "director.sh"), str(cluster.work), str(d.workdir), NODES[d.number - 1],
                front, GW_FRONT, cluster.topo.vip, "eth1", str(SYNC_ID), str(WIRE_WAIT)]
        d.pid = cluster.popen(f"director{d.number}", d.ns, argv, d.log).pid

    def kill(self, cluster, d) -> None:
        """SIGKILL every process in the director's mount namespace (heartbeat, its children, ldirectord,
        a running resource script); the VIP, the IPVS table and the kernel's sync daemon stay."""
        mntns = self._mntns(d)
        if mntns is None:
            raise SeedStackError(f"director{d.number} was never started (no {self.mntns_file(d)})")
        _kill_namespace(mntns)

    def alive(self, cluster, d) -> bool:
        """Whether director ``d``'s heartbeat runs (its pid file names a live process of its namespace)."""
        return self.heartbeat_pid(d) is not None

    def stop(self, cluster, d) -> None:
        """SIGTERM heartbeat (it gives its resources up: sync daemon back to backup, ldirectord stopped,
        VIP removed), then SIGKILL whatever of the director is left after the grace period, and the
        start-up script if it was still waiting for the lab's links."""
        mntns = self._mntns(d)
        pid = self.heartbeat_pid(d)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None  # it exited since its pid file was read
            deadline = time.monotonic() + STOP_GRACE
            while pid is not None and _pid_mntns(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
        if mntns is not None:
            _kill_namespace(mntns)
        if d.pid is not None:
            try:
                os.killpg(d.pid, signal.SIGKILL)  # the start-up script's session, before it became heartbeat
            except ProcessLookupError:
                pass  # nothing of it is left
            _reap(d.pid)

    def reload(self, cluster) -> None:
        """Rewrite every director's ldirectord.cf (weights from the cluster) and run ldirectord's own
        ``reload`` where it runs (autoreload=no, as in the seed); the standby reads it when it takes over."""
        for d in cluster.directors:
            self._write_ldirectord(cluster, d)
            pid = self.ldirectord_pid(d)
            if pid is None:
                continue
            argv = ["nsenter", "--target", str(pid), "--mount", "--uts", "--net",
                    LDIRECTORD, LDIRECTORD_CF, "reload"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise SeedStackError(f"director{d.number}: ldirectord reload exited {done.returncode}: "
                                     f"{(done.stdout + done.stderr).strip()[-500:]}")


# -- helpers -------------------------------------------------------------------------------------------


def _broadcast(address: str, prefix: int) -> str:
    """The IPv4 broadcast address of ``address/prefix`` (IPaddr2's fourth argument in haresources)."""
    import ipaddress

    return str(ipaddress.ip_interface(f"{address}/{prefix}").network.broadcast_address)


def _copy_dirs(src: Path, dest: Path) -> None:
    """Recreate the directory tree of ``src`` (owners and modes, no files) under ``dest``."""
    for root, _dirs, _files in os.walk(src):
        rel = Path(root).relative_to(src)
        target = dest / rel
        target.mkdir(parents=True, exist_ok=True)
        st = os.stat(root)
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)


def _fresh_run(run: Path, work: Path) -> None:
    """A director's /run as systemd-tmpfiles leaves it at boot for heartbeat (Debian's heartbeat.conf),
    plus the mount point that keeps the lab's directory visible when it lies under /run."""
    import grp
    import pwd

    uid, gid = pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid
    run.mkdir(parents=True)
    os.chmod(run, 0o755)
    for sub in ("heartbeat", "heartbeat/ccm", "heartbeat/crm", "heartbeat/dopd", "crm"):
        path = run / sub
        path.mkdir()
        os.chown(path, uid, gid)
        os.chmod(path, 0o750)
    (run / "resource-agents").mkdir()
    if work.is_absolute() and work.parts[:2] == ("/", "run"):
        (run / work.relative_to("/run")).mkdir(parents=True)


def _kill_namespace(mntns: str, rounds: int = 20) -> None:
    """SIGKILL every process of the mount namespace until none is left (a fork racing the first pass
    is caught by the next)."""
    for _ in range(rounds):
        members = _members(mntns)
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it exited between the scan and the signal
        time.sleep(0.05)
    left = _members(mntns)
    if left:
        raise SeedStackError(f"processes {left} of mount namespace {mntns} survived SIGKILL")


def _reap(pid: int) -> None:
    """Collect the exit status of the start-up process if it is this process's child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # started by another process (lab down after lab up): its parent reaps it
