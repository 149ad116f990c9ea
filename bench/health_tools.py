"""Pieces of the health-check benchmark: the three checkers' configurations, the SMTP
responder, process-tree CPU and the kernel table as /proc/net/ip_vs shows it.

Every checker gets the same job: one TCP service 192.0.2.33:25 with N real servers
127.1.x.y:25, an SMTP check every 2 s with a 3 s timeout, a failing server removed
from the service (not quiesced) and put back with weight 1.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VIP = "192.0.2.33"
PORT = 25
HELO = "bench.example"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def addresses(n: int) -> list[str]:
    """N loopback real servers: 127.1.0.1 ... (the whole of 127/8 is local once lo is up)."""
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


def proc_hex(address: str, port: int = PORT) -> str:
    """A real server as /proc/net/ip_vs writes it: ``7F010001:0019``."""
    return f"{socket.inet_aton(address).hex().upper()}:{port:04X}"


# -- the kernel table ----------------------------------------------------------------------


def read_ip_vs() -> str:
    """The whole of /proc/net/ip_vs (one read; cheaper than a netlink dump decoded in Python)."""
    with open("/proc/net/ip_vs") as f:
        return f.read()


def dest_weight(text: str, hexkey: str) -> int | None:
    """Weight of one real server in a /proc/net/ip_vs text, None when it is not in the table."""
    at = text.find("-> " + hexkey)
    if at < 0:
        return None
    fields = text[at:text.find("\n", at)].split()
    return int(fields[3])  # "->", "ADDR:PORT", forwarding, weight, active, inactive


def dest_weights(text: str) -> dict[str, int]:
    """Every real server's weight, by its /proc/net/ip_vs key."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "->" and fields[1] != "RemoteAddress:Port":
            out[fields[1]] = int(fields[3])
    return out


def ipvsadm(*args: str, stdin: str | None = None) -> str:
    """Run ipvsadm, failing loudly."""
    done = subprocess.run(["ipvsadm", *args], input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ipvsadm {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout


# -- CPU -----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, user ticks, system ticks) of one process, reaped children included; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # the command name may hold spaces
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return int(fields[1]), utime + cutime, stime + cstime


def tree_cpu(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and all its living descendants, reaped children included.

    Each living process counts its own time plus that of the children it has reaped
    (cutime, cstime), so a forked ``ipvsadm`` is counted once, by its parent, after it exits.
    """
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                stats[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    user = system = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            user += stats[pid][1]
            system += stats[pid][2]
            todo += children.get(pid, [])
    return user / CLK_TCK, system / CLK_TCK


def raise_nofile(want: int = 65536) -> None:
    """Raise the descriptor limit (inherited by every checker): 1,000 listeners plus connections in flight."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):  # not allowed to raise the hard limit (a container)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def system_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


# -- the SMTP responder ----------------------------------------------------------------------


def build_responder(out: Path) -> Path:
    """Compile the C responder into ``out`` (the source tree may be read-only)."""
    exe = out / "smtp_responder"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler: apt-get install gcc libc6-dev (the responder is C for speed)")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(HERE / "smtp_responder.c")], check=True)
    return exe


class Responder:
    """The C SMTP responder, driven one command line at a time."""

    def __init__(self, exe: Path, addrs: list[str]):
        self.proc = subprocess.Popen([str(exe), str(PORT), *addrs], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"responder did not start: {line!r}")

    def cmd(self, line: str) -> str:
        """Send one command, return its reply (raises on an error reply)."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        if reply.startswith("error") or not reply:
            raise RuntimeError(f"responder: {line}: {reply!r}")
        return reply

    def stats(self) -> dict:
        """Counters since the last reset: seconds, accepted, quit (completed dialogues), hung, per listener."""
        f = self.cmd("stats").split()
        per = [tuple(int(float(x)) for x in p.split(":")) for p in f[5:]]
        return {"seconds": float(f[1]), "accepted": int(f[2]), "quit": int(f[3]), "hung": int(f[4]),
                "count": [c for c, _ in per], "maxgap_ms": [g for _, g in per]}

    def cpu(self) -> tuple[float, float]:
        """The responder's own (user, system) CPU seconds."""
        return tree_cpu(self.proc.pid)

    def close(self) -> None:
        """EOF on its stdin makes it exit."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the checkers --------------------------------------------------------------------------


@dataclass
class Job:
    """What every checker is asked to do."""

    addrs: list[str]
    interval: float = 2.0
    timeout: float = 3.0


class Checker:
    """One health checker under test: writes its configuration, starts, stops."""

    name = ""
    preseed = False  # fill the kernel table before starting (see LdirectordChecker)
    detects = True  # it programs IPVS, so detection and recovery can be timed (see PyFloorChecker)

    def __init__(self, job: Job, work: Path, cwd: Path | None = None):
        self.job = job
        self.work = work
        self.cwd = cwd  # where it runs (lvsmail from another source tree: ``python3 -m`` looks there first)
        self.proc: subprocess.Popen | None = None
        self.log = work / f"{self.name}-{len(job.addrs)}.log"

    def argv(self) -> list[str]:
        """Command line of the checker (after its configuration is written)."""
        raise NotImplementedError

    def start(self) -> None:
        """Write the configuration and start the checker in the foreground, its output to a log."""
        argv = self.argv()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.cwd)

    def alive(self) -> bool:
        """Whether the checker is still running."""
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the checker's process tree so far."""
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM its process group, then SIGKILL after 20 s."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # keepalived forks its checker child into the same group; make sure nothing lingers
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class LvsmailChecker(Checker):
    """lvsmail's director: the health engine programs IPVS through the reconciler.

    ``tree``: run the lvsmail of another source tree (a ``git worktree`` of an
    older commit), named ``lvsmail@<its directory name>``, to compare two
    commits in one lab run.
    """

    name = "lvsmail"

    def __init__(self, job: Job, work: Path, repair_interval: float = 3600.0, tree: Path | None = None):
        if tree is not None:
            self.name = f"lvsmail@{tree.name}"
        super().__init__(job, work, cwd=tree)
        self.repair_interval = repair_interval

    def argv(self) -> list[str]:
        cfg = self.work / f"lvsmail-{len(self.job.addrs)}.yaml"
        lines = [
            "cluster: bench", f"vips: [{VIP}]", "services:", "  - name: smtp", f"    vip: {VIP}", f"    port: {PORT}",
            "    forwarding: dr", "    quiescent: false",
            f"    check: {{type: smtp, interval: {self.job.interval:g}, timeout: {self.job.timeout:g}, helo: {HELO}}}",
            "    realservers:",
        ] + [f"      - {a}" for a in self.job.addrs]
        cfg.write_text("\n".join(lines) + "\n")
        state = self.work / f"lvsmail-state-{len(self.job.addrs)}"
        return [sys.executable, "-m", "lvsmail", "director", "start", "-c", str(cfg), "--state-dir", str(state),
                "--repair-interval", f"{self.repair_interval:g}"]


class LvsmailBoundedChecker(LvsmailChecker):
    """The same director with a smaller bound on checks in flight (the engine's ``concurrency``)."""

    def __init__(self, job: Job, work: Path, repair_interval: float = 3600.0, concurrency: int = 64):
        self.name = f"lvsmail-c{concurrency}"
        super().__init__(job, work, repair_interval)
        self.concurrency = concurrency

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("director")
        return [sys.executable, str(HERE / "health_director.py"), "--concurrency", str(self.concurrency)] + argv[i + 2:]


class LvsmailVariantChecker(LvsmailChecker):
    """The same director with N check worker processes (``-wN``) and/or on uvloop (``-uv``)."""

    def __init__(self, job: Job, work: Path, repair_interval: float = 3600.0, workers: int = 0,
                 uvloop: bool = False):
        self.name = "lvsmail" + ("-uv" if uvloop else "") + (f"-w{workers}" if workers else "")
        super().__init__(job, work, repair_interval)
        self.workers, self.uvloop = workers, uvloop

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("director")
        return [sys.executable, str(HERE / "health_director.py"), "--check-workers", str(self.workers)] + \
            (["--uvloop"] if self.uvloop else []) + argv[i + 2:]


class KeepalivedChecker(Checker):
    """keepalived's checker process (``-C``), SMTP_CHECK with its default retry (1, after 1 s)."""

    name = "keepalived"

    def __init__(self, job: Job, work: Path, retry: int | None = None):
        super().__init__(job, work)
        self.retry = retry

    def argv(self) -> list[str]:
        n = len(self.job.addrs)
        cfg = self.work / f"keepalived-{n}.conf"
        retry = "" if self.retry is None else f"            retry {self.retry}\n"
        reals = "".join(
            f"    real_server {a} {PORT} {{\n        weight 1\n        SMTP_CHECK {{\n"
            f"            connect_timeout {self.job.timeout:g}\n{retry}            helo_name {HELO}\n"
            f"        }}\n    }}\n"
            for a in self.job.addrs
        )
        cfg.write_text(
            "global_defs {\n    router_id bench\n}\n"
            f"virtual_server {VIP} {PORT} {{\n    delay_loop {self.job.interval:g}\n    lb_algo wlc\n"
            f"    lb_kind DR\n    protocol TCP\n{reals}}}\n"
        )
        pid = self.work / f"keepalived-{n}"
        return ["keepalived", "--dont-fork", "--log-console", "--no-syslog", "--check", "-f", str(cfg),
                "-p", f"{pid}.pid", "-c", f"{pid}.checkers.pid", "-r", f"{pid}.vrrp.pid", "-b", f"{pid}.bfd.pid"]


class LdirectordChecker(Checker):
    """ldirectord, ``checktype = negotiate``, ``service = smtp`` (Net::SMTP), fork = no (its default).

    The table is filled before it starts, as when ldirectord restarts over a live
    table: from an empty table its start-up spawns ~5 ipvsadm per real server, each
    reading the whole table, which at N = 1,000 takes many minutes under emulation.
    """

    name = "ldirectord"
    preseed = True

    def argv(self) -> list[str]:
        n = len(self.job.addrs)
        cfg = self.work / f"ldirectord-{n}.cf"
        reals = "".join(f"\treal={a}:{PORT} gate 1\n" for a in self.job.addrs)
        cfg.write_text(
            f"checktimeout={self.job.timeout:g}\nnegotiatetimeout={self.job.timeout:g}\n"
            f"checkinterval={self.job.interval:g}\nautoreload=no\nquiescent=no\nsupervised=yes\nfork=no\n"
            f"virtual={VIP}:{PORT}\n{reals}\tservice=smtp\n\tchecktype=negotiate\n\tscheduler=wlc\n\tprotocol=tcp\n"
        )
        if shutil.which("ldirectord") is None:
            raise RuntimeError("ldirectord is not installed (apt-get install ldirectord)")
        return ["ldirectord", str(cfg), "start"]


def preseed_rules(addrs: list[str]) -> str:
    """The whole service as ``ipvsadm -R`` input."""
    lines = [f"-A -t {VIP}:{PORT} -s wlc"] + [f"-a -t {VIP}:{PORT} -r {a}:{PORT} -g -w 1" for a in addrs]
    return "\n".join(lines) + "\n"


class PyFloorChecker(Checker):
    """The cheapest Python SMTP check (bench/health_pyfloor.py): CPU only, it programs no IPVS.

    The table is filled before it starts and stays as it is, so the benchmark
    measures its steady state and skips detection.
    """

    name = "pyfloor"
    preseed = True
    detects = False

    def argv(self) -> list[str]:
        listing = self.work / f"pyfloor-{len(self.job.addrs)}.txt"
        listing.write_text("\n".join(self.job.addrs) + "\n")
        return [sys.executable, str(HERE / "health_pyfloor.py"), "--interval", f"{self.job.interval:g}",
                "--timeout", f"{self.job.timeout:g}", "--port", str(PORT), "--helo", HELO, str(listing)]


CHECKERS = {"lvsmail": LvsmailChecker, "lvsmail-uv": LvsmailVariantChecker, "keepalived": KeepalivedChecker,
            "ldirectord": LdirectordChecker, "pyfloor": PyFloorChecker}
