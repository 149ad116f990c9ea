"""``lvsmail lab up|down|status``: the seed deployment, whole, in network namespaces.

What :func:`up` builds (TUN by default, DR or NAT on request):

* the lab topology with **two directors** side by side (``Topology(directors=2)``),
  each running a director layer (``--stack``, see ``lvsmail.lab.stacks``; by default
  ``lvsmail director start``) with the same services, a VRRPv3
  instance that places the VIP (priority 150 on director 1, 100 on director 2,
  preemption on: failback), and IPVS connection sync whose role follows VRRP;
  with NAT a second instance on the inside link moves the real servers' default
  gateway (``NAT_GATEWAY``) with the VIP;
* **N real servers** (default 4), each running a private Postfix, Dovecot and a
  static web server for the health page, all delivering into one shared
  directory (the shared storage of the seed), each prepared by ``lvsmail
  realserver join`` (VIP on ``tunl0`` or ``lo``, ARP and rp_filter sysctls, or
  with NAT the default route through the directors,
  the cluster's ``mail:`` settings in Postfix and Dovecot, the health page);
* services smtp/25 (persistent 120 s, as the seed), imap/143 and http/80, each
  with its protocol's health check.

Everything lives in namespaces with one prefix and in one directory under
``/run/lvsmail-lab/PREFIX``; a state file there records the namespaces and every
process started, so ``down`` — in another process, later — removes all of it
and ``status`` can show it. Processes are started in their own sessions so they
outlive the ``up`` command.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lvsmail.lab import mailstack
from lvsmail.lab.cluster import lvsmail_argv, parse_proc_ip_vs
from lvsmail.lab.topology import (
    CLIENT,
    CLIENT_EXTRA,
    DIRECTOR2_INSIDE,
    DIRECTOR_INSIDE,
    GW_INSIDE,
    MODES,
    NAT_GATEWAY,
    SYNC_ID,
    RealServer,
    Topology,
    wait_until,
)
from lvsmail.net import netns
from lvsmail.statefiles import write_json

#: Where running lab clusters keep their files and state (tmpfs: gone with the machine, as the namespaces).
STATE_DIR = Path("/run/lvsmail-lab")
STATE_FILE = "lab-cluster.json"
#: Services of the lab cluster: name, port, check block (YAML flow mapping). Interval 2 s and timeout
#: 10 s are the seed's checkinterval/checktimeout; under emulation Dovecot's first answers take seconds.
SERVICES = (
    ("smtp", 25, "{type: smtp, interval: 2, timeout: 10, fall: 2, rise: 1}"),
    ("imap", 143, "{type: imap, interval: 2, timeout: 10, fall: 2, rise: 1}"),
    ("http", 80, '{type: http, path: /solicitud.html, receive: "test page", interval: 2, timeout: 10, fall: 2, '
                 "rise: 1}"),
)
SMTP_PERSISTENCE = 120  # the seed's persistent=120
VRID = 51
PRIORITIES = (150, 100)
#: VRRP advertisement interval: master-down after about 3.6 of them (RFC 5798 §6.1); 1 s survives emulation.
ADVERT = 1
REGISTRATION_PORT = 8730
#: More client addresses than the topology's four, so persistence (per client address) spreads the load.
EXTRA_CLIENTS = tuple(f"203.0.113.{20 + i}" for i in range(12))
#: Deadlines under emulation (the lab VM is ~10x slower than this machine).
READY_TIMEOUT = 900.0


def _say_default(msg: str) -> None:
    print(msg, flush=True)


class LabUpError(RuntimeError):
    """The cluster could not be built or found; the message says what and where the logs are."""


@dataclass
class DirectorProc:
    """One director of the pair: its namespace, cluster file, state directory and process."""

    number: int
    ns: str
    config: Path
    workdir: Path
    pid: int | None = None

    @property
    def state_dir(self) -> Path:
        """``--state-dir`` of ``lvsmail director start`` (API socket, health, kernel profile)."""
        return self.workdir / "state"

    @property
    def log(self) -> Path:
        """The director's log file."""
        return self.workdir / "director.log"

    @property
    def inside(self) -> str:
        """Its address on the real servers' network."""
        return DIRECTOR_INSIDE if self.number == 1 else DIRECTOR2_INSIDE


class MailCluster:
    """The whole lab cluster: topology, director pair, real servers with their mail stacks."""

    def __init__(self, mode: str = "tun", reals: int = 4, spare: int = 0, prefix: str | None = None,
                 state_dir: Path = STATE_DIR, stack: str = "lvsmail") -> None:
        from lvsmail.lab import stacks

        try:
            #: The director layer: lvsmail's own, or an anchor it is compared with (``--stack``).
            self.stack = stacks.get(stack)
        except ValueError as exc:
            raise LabUpError(str(exc)) from None
        if mode not in MODES:
            raise LabUpError(f"--mode must be one of {', '.join(MODES)}")
        if not 1 <= reals <= 20:
            raise LabUpError("--realservers must be between 1 and 20")
        self.mode, self.nreals, self.nspare = mode, reals, spare
        total = reals + spare
        # Every real server starts bare: `lvsmail realserver join` prepares it, as on a real machine.
        self.topo = Topology(mode, reals=total, prefix=prefix or f"lab{secrets.token_hex(2)}", directors=2,
                             vip_on=None, bare=tuple(f"rs{i + 1}" for i in range(total)))
        self.work = Path(state_dir) / self.topo.prefix
        self.state_path = self.work / STATE_FILE
        self.store = mailstack.SharedStore(self.work / "store")
        self.token = self.work / "registration.token"
        self.cluster_file = self.work / "cluster.yaml"  # the real servers' copy
        self.directors = [DirectorProc(n, node.ns, self.work / f"director{n}.yaml", self.work / f"dir{n}")
                          for n, node in enumerate(self.topo.directors, 1)]
        self.pids: dict[str, int] = {}  # name -> pid of processes started here (own sessions)
        self.weights: dict[str, int] = {}  # role -> weight override (reload tests)
        self.created = 0.0

    # -- real servers ------------------------------------------------------------------------------

    @property
    def reals(self) -> list[RealServer]:
        """The real servers listed in the cluster file."""
        return self.topo.reals[:self.nreals]

    @property
    def spares(self) -> list[RealServer]:
        """Real servers built but not listed: they join through the registration API."""
        return self.topo.reals[self.nreals:]

    def rs_dir(self, role: str) -> Path:
        """A real server's own directory (instances, root for join's files, state)."""
        return self.work / role

    def postfix(self, role: str) -> mailstack.PostfixInstance:
        """The Postfix instance of a real server."""
        ns = self.topo.node(role).ns
        return mailstack.PostfixInstance(self.rs_dir(role), role, lambda argv: ["ip", "netns", "exec", ns, *argv])

    def dovecot(self, role: str) -> mailstack.DovecotInstance:
        """The Dovecot instance of a real server."""
        ns = self.topo.node(role).ns
        return mailstack.DovecotInstance(self.rs_dir(role), self.store, lambda argv: ["ip", "netns", "exec", ns, *argv])

    def rs_root(self, role: str) -> Path:
        """``--root`` of join: where its sysctl.d, systemd unit and health page go."""
        return self.rs_dir(role) / "root"

    def join_argv(self, role: str) -> list[str]:
        """``lvsmail realserver join`` for this real server, with its private instances."""
        rs = self.topo.node(role)
        return lvsmail_argv("realserver", "join", "-c", str(self.cluster_file), "--address", rs.address,
                            "--root", str(self.rs_root(role)),
                            "--state-file", str(self.rs_dir(role) / "realserver.json"),
                            "--postfix-config-dir", str(self.postfix(role).conf),
                            "--dovecot-config", str(self.dovecot(role).config), "--no-arp-check",
                            # The daemons start after the join, with its settings: nothing to reload.
                            "--no-reload")

    def leave_argv(self, role: str) -> list[str]:
        """``lvsmail realserver leave`` for this real server (drains, deregisters, restores)."""
        return lvsmail_argv("realserver", "leave", "--root", str(self.rs_root(role)),
                            "--state-file", str(self.rs_dir(role) / "realserver.json"),
                            "--postfix-config-dir", str(self.postfix(role).conf),
                            "--dovecot-config", str(self.dovecot(role).config), "--drain-timeout", "20",
                            "--no-reload")  # its daemons are stopped right after it

    # -- cluster files -----------------------------------------------------------------------------

    def cluster_text(self, director: int | None) -> str:
        """The cluster file: the same services everywhere; per director its VRRP priority and API address."""
        vip = self.topo.vip
        lines = [f"# lvsmail lab up {self.topo.prefix}: the seed deployment ({self.mode}, "
                 f"{self.nreals} real servers, a director pair)",
                 "cluster: clustermail-lab", f'vips: ["{vip}"]',
                 "kernel: {expire_nodest_conn: 1, expire_quiescent_template: 1"
                 + (", ip_forward: 1}" if self.mode == "nat" else "}"), "services:"]
        for name, port, check in SERVICES:
            lines += [f"  - name: {name}", f'    vip: "{vip}"', f"    port: {port}", "    scheduler: wlc",
                      f"    forwarding: {self.mode}"]
            if name == "smtp":
                lines.append(f"    persistent: {SMTP_PERSISTENCE}")
            lines.append("    realservers:")
            for rs in self.reals:
                lines.append(f'      - {{address: "{rs.address}", name: {rs.role}, '
                             f'weight: {self.weights.get(rs.role, 1)}}}')
            lines.append(f"    check: {check}")
        lines += [f"sync: {{interface: eth1, syncid: {SYNC_ID:d}, role: auto}}"]
        if director is not None:
            priority = PRIORITIES[director - 1]
            common = f"priority: {priority}, advert_interval: {ADVERT}, preempt: true"
            lines += ["failover:", "  interface: eth0", "  instances:"]
            if self.mode != "nat":
                # The inside link is tracked: a director that cannot reach its real servers must not hold the
                # VIP, and while either link is down its failed checks are its own (not counted).
                lines.append(f"    - {{name: mail, vrid: {VRID}, {common}, vips: [{vip}/24], sync: true, "
                             "track_interfaces: [eth1]}")
            else:
                # NAT: the real servers answer through their default gateway, which must be on the director
                # holding the VIP. Two instances elect alike; each tracks the other's interface, so a link
                # lost on the master moves both (keepalived would use a vrrp_sync_group).
                lines += [f"    - {{name: mail, vrid: {VRID}, {common}, vips: [{vip}/24], sync: true, "
                          "track_interfaces: [eth1]}",
                          f"    - {{name: gateway, vrid: {VRID + 1}, interface: eth1, {common}, "
                          f"vips: [{NAT_GATEWAY}/24], track_interfaces: [eth0]}}"]
        inside = [d.inside for d in self.directors]
        lines += ["registration:"]
        if director is not None:
            lines += [f'  listen: "{inside[director - 1]}:{REGISTRATION_PORT}"',
                      f'  members_file: "{self.directors[director - 1].workdir}/members.json"',
                      "  allowed_networks: [198.51.100.0/24]"]
        lines += [f'  directors: [{", ".join(f"{chr(34)}http://{a}:{REGISTRATION_PORT}{chr(34)}" for a in inside)}]',
                  f'  token_file: "{self.token}"', "  drain_timeout: 20",
                  "realserver:", "  services: [smtp, imap, http]",
                  f"  directors: [{', '.join(inside)}]",
                  *([f"  nat_gateway: {NAT_GATEWAY}"] if self.mode == "nat" else []),
                  "mail:", f"  hostname: {mailstack.HOSTNAME}", f"  domain: {mailstack.DOMAIN}",
                  f'  mailbox: {{layout: virtual, root: "{self.store.boxes}", maps: "texthash:{self.store.vmailbox}", '
                  "owner: nobody}",
                  f'  storage: {{path: "{self.store.path}", type: local}}',
                  '  health_page: {path: /var/www/html/solicitud.html, text: "test page"}']
        return "\n".join(lines) + "\n"

    def write_configs(self) -> None:
        """Write the real servers' file and each director's own files (in its stack's format)."""
        self.cluster_file.write_text(self.cluster_text(None))
        for d in self.directors:
            d.workdir.mkdir(parents=True, exist_ok=True)
        self.stack.write_configs(self)

    def reload(self) -> None:
        """Rewrite the files from the cluster's state (``weights``) and reload the directors their stack's way."""
        self.cluster_file.write_text(self.cluster_text(None))
        self.stack.reload(self)
        self.save()

    # -- processes ---------------------------------------------------------------------------------

    def popen(self, name: str, ns: str, argv: list[str], log: Path) -> subprocess.Popen:
        """Start ``argv`` in ``ns`` in its own session (it outlives this process); record its pid."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=child_env())
        self.pids[name] = proc.pid
        return proc

    def start_director(self, d: DirectorProc) -> None:
        """Start director ``d``'s layer (its stack's daemons) in its namespace."""
        d.workdir.mkdir(parents=True, exist_ok=True)
        self.stack.start(self, d)

    def kill_director(self, d: DirectorProc) -> None:
        """Crash director ``d`` as its stack would crash: every daemon SIGKILLed, VIP and IPVS table left."""
        self.stack.kill(self, d)

    def director_alive(self, d: DirectorProc) -> bool:
        """Whether director ``d``'s layer runs."""
        return self.stack.alive(self, d)

    def start_mail(self, role: str) -> None:
        """Postfix, Dovecot and the health page server of one real server."""
        ns = self.topo.node(role).ns
        self.postfix(role).start()
        dc = self.dovecot(role)
        dc.start(lambda argv, **kw: self.popen(f"{role}-dovecot", ns, argv, self.rs_dir(role) / "dovecot.stderr"))
        web = self.rs_root(role) / "var/www/html"
        self.popen(f"{role}-http", ns, mailstack.health_page_server(web), self.rs_dir(role) / "http.log")

    def stop_process(self, name: str, sig: int = signal.SIGTERM, wait: float = 15) -> None:
        """Signal a recorded process's group, wait, then SIGKILL it."""
        pid = self.pids.get(name)
        if pid is None or not mailstack._alive(pid):
            return
        for s in (signal.SIGCONT, sig):
            try:
                os.killpg(pid, s)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while mailstack._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)

    # -- up ----------------------------------------------------------------------------------------

    def up(self, say: Callable[[str], None] = _say_default, join_spares: bool = False) -> dict[str, float]:
        """Build and start everything; return timings. On failure, everything built so far is removed."""
        t0 = time.monotonic()
        self.created = time.time()
        timings: dict[str, float] = {}
        trace = os.environ.get("LVSMAIL_LAB_TRACE")
        if trace:  # diagnosis in the VM: every thread's stack to stderr now and then
            import faulthandler

            faulthandler.dump_traceback_later(float(trace), repeat=True)
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            os.chmod(self.work, 0o755)  # Postfix and Dovecot users must traverse it
            self.save()  # from here on `lab down` can clean up, whatever fails
            self.store.create()
            fd = os.open(self.token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, f"secret={secrets.token_hex(32)}\n".encode())
            os.close(fd)
            self.write_configs()
            self.topo.create_namespaces()
            self.save()
            # The directors start first: under emulation their start-up is the longest wait.
            for d in self.directors:
                self.start_director(d)
            self.save()
            say(f"directors starting (logs in {self.work}/dir1, dir2); wiring the namespaces ...")
            self.topo.wire()
            self.topo.run(self.topo.client, ["sh", "-c", "; ".join(f"ip addr add {a}/24 dev eth0"
                                                                    for a in EXTRA_CLIENTS)])
            timings["wired"] = time.monotonic() - t0
            for rs in self.topo.reals:
                d = self.rs_dir(rs.role)
                for sub in ("etc/sysctl.d", "etc/modules-load.d", "etc/systemd/system", "var/www/html"):
                    (self.rs_root(rs.role) / sub).mkdir(parents=True, exist_ok=True)
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, 0o755)
                self.postfix(rs.role).create()
                self.dovecot(rs.role).create()
            joining = self.reals + (self.spares if join_spares else [])
            say(f"lvsmail realserver join on {', '.join(rs.role for rs in joining)} ...")
            self.join(joining, say)
            timings["joined"] = time.monotonic() - t0
            for rs in joining:
                self.start_mail(rs.role)
            self.save()
            say("Postfix, Dovecot and the health page started; waiting for the director pair ...")
            self.wait_ready(joining, say=say)
            timings["ready"] = time.monotonic() - t0
            self.save()
        except BaseException:
            say(f"lab up failed after {time.monotonic() - t0:.0f} s; removing what was built")
            self.save_logs()
            self.down(say=lambda m: None, keep_logs=True)
            raise
        return timings

    def join(self, reals: list[RealServer], say: Callable[[str], None] = lambda m: None) -> None:
        """``lvsmail realserver join`` on each real server, one after another; LabUpError if one fails."""
        failed = []
        for rs in reals:
            t0 = time.monotonic()
            rc, output = self.realserver_command(rs.role, self.join_argv(rs.role))
            (self.rs_dir(rs.role) / "join.log").write_text(output)
            say(f"  {rs.role}: join exited {rc} after {time.monotonic() - t0:.0f} s")
            if rc != 0:
                failed.append(f"{rs.role} (exit {rc}): {output[-1500:]}")
        if failed:
            raise LabUpError("lvsmail realserver join failed on " + "\n".join(failed))

    def leave(self, role: str) -> tuple[int, str]:
        """``lvsmail realserver leave`` on a real server (drain, deregister, restore): (exit status, output)."""
        rc, output = self.realserver_command(role, self.leave_argv(role))
        (self.rs_dir(role) / "leave.log").write_text(output)
        return rc, output

    def realserver_command(self, role: str, argv: list[str]) -> tuple[int, str]:
        """Run an ``lvsmail realserver ...`` command line inside the real server's namespace: (status, output).

        The command runs in this process, in a thread that entered the namespace (netlink,
        /proc/sys and the postconf/doveconf it starts all act there): the same click command
        as the console script, without another interpreter, which under emulation costs
        over a minute per join. Calls are serialised (the output is captured process-wide).
        """
        import contextlib
        import io

        from lvsmail.commands.realserver import realserver

        args = argv[argv.index("realserver") + 1:]
        out = io.StringIO()

        def body() -> int:
            try:
                realserver.main(args=args, prog_name="lvsmail realserver", standalone_mode=False)
            except SystemExit as exc:
                return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            return 0

        with _COMMAND_LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = netns.run_in_netns(self.topo.node(role).ns, body)
            except Exception as exc:  # click usage errors and anything the command did not catch
                out.write(f"{type(exc).__name__}: {exc}\n")
                rc = 1
        return rc, f"$ {' '.join(argv)}\n{out.getvalue()}"

    def wait_ready(self, reals: list[RealServer], timeout: float = READY_TIMEOUT,
                   say: Callable[[str], None] = _say_default) -> None:
        """Until: mail ports answer on every real server, both tables are complete (only the VIP holder's
        when the stack keeps no table on its standby), one director holds the VIP."""
        for rs in reals:
            for port in (25, 143, 80):
                wait_until(lambda rs=rs, port=port: _connects(rs.ns, rs.address, port), timeout, interval=0.3,
                           what=f"{rs.role} listening on port {port}")
        want = {f"TCP {self.topo.vip}:{port}": len(reals) for _, port, _ in SERVICES}

        said = [time.monotonic()]

        def complete(d: DirectorProc):
            if not self.director_alive(d):
                raise LabUpError(f"director {d.number} exited; its log ({d.log}):\n{mailstack._tail(d.log)}")
            table = self.table(d)
            if time.monotonic() - said[0] > 60:  # under emulation this can take minutes: say where it stands
                said[0] = time.monotonic()
                have = ", ".join(f"{k.split(':')[-1]} "
                                 f"{sum(x.weight > 0 for x in table[k].dests) if k in table else '-'}"
                                 f"/{n}" for k, n in want.items())
                say(f"  still waiting for director {d.number}: {have}; its log ends:\n"
                    + "\n".join("    " + line for line in mailstack._tail(d.log, 600).splitlines()[-4:]))
            return all(k in table and sum(x.weight > 0 for x in table[k].dests) == n for k, n in want.items())

        if self.stack.table_on_standby:
            for d in self.directors:
                try:
                    wait_until(lambda d=d: complete(d), timeout, interval=0.5, what=f"director {d.number}'s table")
                except TimeoutError as exc:
                    raise LabUpError(f"{exc}; log ({d.log}):\n{mailstack._tail(d.log)}") from None
            wait_until(lambda: self.vip_holder() is not None, timeout, interval=0.5,
                       what="a director holding the VIP")
            return

        # The table is a resource of the VIP holder (the seed's ldirectord): whoever holds the VIP must
        # have it complete; every director must still be running.
        def holder_complete() -> bool:
            for d in self.directors:
                if not self.director_alive(d):
                    raise LabUpError(f"director {d.number} exited; its log ({d.log}):\n{mailstack._tail(d.log)}")
            holder = self.vip_holder()
            return holder is not None and complete(holder)

        try:
            wait_until(holder_complete, timeout, interval=0.5, what="the VIP holder's complete table")
        except TimeoutError as exc:
            raise LabUpError(f"{exc}; logs in {self.work}/dir1, dir2") from None

    # -- views -------------------------------------------------------------------------------------

    def table(self, d: DirectorProc):
        """A director's IPVS table as its kernel shows it."""
        return parse_proc_ip_vs(netns.run_in_netns(d.ns, lambda: Path("/proc/thread-self/net/ip_vs").read_text()))

    def vip_holders(self) -> list[DirectorProc]:
        """The directors whose eth0 carries the VIP (two during a split brain, or after a crash left it behind)."""
        held = []
        for d in self.directors:
            out = subprocess.run(["ip", "netns", "exec", d.ns, "ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                                 capture_output=True, text=True, timeout=60).stdout
            if f" {self.topo.vip}/" in out:
                held.append(d)
        return held

    def vip_holder(self) -> DirectorProc | None:
        """The director holding the VIP (the first of them, if several do)."""
        held = self.vip_holders()
        return held[0] if held else None

    def rs_gateway(self) -> str:
        """A real server's default gateway: the floating NAT gateway on the directors, else the router."""
        return NAT_GATEWAY if self.mode == "nat" else GW_INSIDE

    def clients(self) -> list[str]:
        """Client source addresses available in the client namespace."""
        return [CLIENT, *CLIENT_EXTRA, *EXTRA_CLIENTS]

    # -- state -------------------------------------------------------------------------------------

    def to_state(self) -> dict:
        """What ``down`` and ``status`` need from another process."""
        return {
            "version": 1, "prefix": self.topo.prefix, "stack": self.stack.name, "mode": self.mode,
            "reals": self.nreals, "spare": self.nspare,
            "work": str(self.work), "created": self.created, "vip": self.topo.vip,
            "namespaces": [n.ns for n in self.topo.nodes if n.ns in self.topo._created],
            "pids": {name: {"pid": pid, "cmdline": _cmdline(pid)} for name, pid in self.pids.items()},
            "directors": [{"number": d.number, "ns": d.ns, "config": str(d.config), "state_dir": str(d.state_dir),
                           "log": str(d.log)} for d in self.directors],
            "realservers": [{"role": rs.role, "ns": rs.ns, "address": rs.address,
                             "listed": rs in self.reals} for rs in self.topo.reals],
            "weights": self.weights,
        }

    def save(self) -> None:
        """Write the state file (atomically)."""
        self.work.mkdir(parents=True, exist_ok=True)
        write_json(self.state_path, self.to_state(), indent=2, newline=True)

    @classmethod
    def load(cls, state_path: Path) -> MailCluster:
        """The cluster a state file describes (processes are not touched)."""
        try:
            state = json.loads(Path(state_path).read_text())
        except (OSError, ValueError) as exc:
            raise LabUpError(f"cannot read the lab state {state_path}: {exc}") from None
        # Files written before the stacks existed are lvsmail's.
        self = cls(state["mode"], state["reals"], state.get("spare", 0), prefix=state["prefix"],
                   state_dir=Path(state["work"]).parent, stack=state.get("stack", "lvsmail"))
        self.created = state.get("created", 0.0)
        self.topo._created = [ns for ns in state.get("namespaces", []) if ns in netns.list_netns()]
        self.weights = dict(state.get("weights", {}))
        for name, rec in state.get("pids", {}).items():
            # A recycled pid must not be signalled: the command line must still be ours.
            if mailstack._alive(rec["pid"]) and _cmdline(rec["pid"]) == rec["cmdline"]:
                self.pids[name] = rec["pid"]
        for d in self.directors:
            d.pid = self.pids.get(f"director{d.number}")
        return self

    def save_logs(self) -> Path | None:
        """Copy every log of the cluster to ``$LVSMAIL_LAB_OUT`` (the lab VM's only directory that survives it)."""
        out = os.environ.get("LVSMAIL_LAB_OUT")
        if not out or not self.work.exists():
            return None
        dest = Path(out) / f"lab-{self.topo.prefix}-logs"
        for path in self.work.rglob("*.log"):
            target = dest / path.relative_to(self.work)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(path, target)
            except OSError:
                continue  # a log that vanished meanwhile
        return dest

    # -- down --------------------------------------------------------------------------------------

    def down(self, say: Callable[[str], None] = _say_default, keep_logs: bool = False) -> list[str]:
        """Stop every process, remove every namespace and the directory; returns what could not be removed."""
        problems = []
        for d in self.directors:
            try:
                self.stack.stop(self, d)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                problems.append(f"director{d.number} ({self.stack.name}) could not be stopped: {exc}")
        for rs in self.topo.reals:
            if not self.rs_dir(rs.role).exists():
                continue
            self.postfix(rs.role).stop()
            self.stop_process(f"{rs.role}-dovecot")
            self.stop_process(f"{rs.role}-http")
        for name in list(self.pids):
            self.stop_process(name)
        self.topo.close()
        left = [ns for ns in netns.list_netns() if ns.startswith(f"{self.topo.prefix}-")]
        problems += [f"namespace {ns} still exists" for ns in left]
        if keep_logs:
            say(f"logs kept in {self.work}")
        elif self.work.exists():
            shutil.rmtree(self.work, ignore_errors=True)
            if self.work.exists():
                problems.append(f"{self.work} could not be removed")
        return problems


# -- helpers ---------------------------------------------------------------------------------------

_COMMAND_LOCK = threading.Lock()


def child_env() -> dict[str, str]:
    """Environment for lvsmail commands started here: this checkout importable, as the console script needs."""
    from lvsmail.lab.vm import REPO

    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO))


def run_logged(log: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``lvsmail ARGS`` as an administrator types it, its output into ``log`` (readable from outside the VM
    while it runs); the result carries that output as ``stdout``."""
    with open(log, "w") as out:
        done = subprocess.run(lvsmail_argv(*args), stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=child_env())
    done.stdout = Path(log).read_text()
    return done


def _connects(ns: str, host: str, port: int) -> bool:
    """Whether a TCP connection to host:port from ``ns`` succeeds."""
    s = netns.socket_in_netns(ns)
    try:
        s.settimeout(2)
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _reap(pid: int) -> None:
    """Collect a child's exit status if it is ours (no zombie left behind)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def find_states(state_dir: Path = STATE_DIR) -> list[Path]:
    """State files of the lab clusters under ``state_dir``."""
    return sorted(Path(state_dir).glob(f"*/{STATE_FILE}"))


def one_state(state_dir: Path = STATE_DIR, prefix: str | None = None) -> Path:
    """The one cluster's state file (or the one named by ``prefix``); LabUpError when none or several."""
    found = find_states(state_dir)
    if prefix:
        found = [p for p in found if p.parent.name == prefix]
    if not found:
        raise LabUpError(f"no lab cluster is up (nothing in {state_dir}); start one with `lvsmail lab up`")
    if len(found) > 1:
        raise LabUpError(f"{len(found)} lab clusters are up ({', '.join(p.parent.name for p in found)}): "
                         "name one with --prefix")
    return found[0]


def status_lines(cluster: MailCluster) -> list[str]:
    """What ``lvsmail lab status`` prints: directors (VIP, table), real servers (daemons), mailboxes."""
    lines = [f"lab cluster {cluster.topo.prefix}: stack {cluster.stack.name}, mode {cluster.mode}, "
             f"VIP {cluster.topo.vip}, "
             f"{cluster.nreals} real servers, files in {cluster.work}"]
    holder = cluster.vip_holder() if cluster.topo._created else None
    for d in cluster.directors:
        alive = cluster.director_alive(d)
        try:
            table = cluster.table(d) if d.ns in cluster.topo._created else {}
        except OSError:
            table = {}
        services = ", ".join(f"{k.split(':')[-1]}:{sum(x.weight > 0 for x in s.dests)}/{len(s.dests)}"
                             for k, s in sorted(table.items()) if k.startswith("TCP"))
        lines.append(f"  director{d.number} {d.inside:<15} {'running' if alive else 'STOPPED':8}"
                     f"{' VIP' if holder is d else '    '}  services (port:up/all) {services or '-'}")
    for rs in cluster.topo.reals:
        if not cluster.rs_dir(rs.role).exists():
            continue
        pf = cluster.postfix(rs.role)
        parts = [f"postfix {'up' if pf.master_pid() else 'down'} (queue {pf.queued()})",
                 f"dovecot {'up' if cluster.dovecot(rs.role).pid() else 'down'}",
                 f"http {'up' if mailstack._alive(cluster.pids.get(f'{rs.role}-http', -1)) else 'down'}"]
        joined = (cluster.rs_dir(rs.role) / "realserver.json").exists()
        lines.append(f"  {rs.role:<4} {rs.address:<15} {'joined ' if joined else 'spare  '} {', '.join(parts)}")
    ids = cluster.store.message_ids() if cluster.store.boxes.exists() else {}
    lines.append(f"  shared storage {cluster.store.path}: {sum(len(v) for v in ids.values())} messages")
    return lines


def _reexec_in_vm(argv: list[str], timeout: float, memory: str = "3G") -> int:
    """Run ``python -m lvsmail.lab.cluster_up ARGV`` in the lab VM (the host kernel lacks IPVS or IPIP)."""
    from lvsmail.lab import vm

    return vm.run([sys.executable, "-m", "lvsmail.lab.cluster_up", *argv], timeout=timeout, memory=memory)


def main(argv: list[str] | None = None) -> int:
    """``python3 -m lvsmail.lab.cluster_up up|down|status`` (the fast path inside the VM)."""
    import argparse

    from lvsmail.lab import stacks

    parser = argparse.ArgumentParser(prog="python3 -m lvsmail.lab.cluster_up", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("up")
    p.add_argument("--mode", choices=MODES, default="tun")
    p.add_argument("--stack", choices=stacks.names(), default=stacks.DEFAULT)
    p.add_argument("--realservers", type=int, default=4)
    p.add_argument("--then", default=None, help="shell command to run once up, then tear down")
    p.add_argument("--state-dir", type=Path, default=STATE_DIR)
    for verb in ("down", "status"):
        q = sub.add_parser(verb)
        q.add_argument("--prefix", default=None)
        q.add_argument("--state-dir", type=Path, default=STATE_DIR)
    args = parser.parse_args(argv)
    try:
        if args.verb == "up":
            cluster = MailCluster(args.mode, args.realservers, state_dir=args.state_dir, stack=args.stack)
            t0 = time.monotonic()
            timings = cluster.up()
            print(f"up in {timings['ready']:.0f} s (wired {timings['wired']:.0f} s, joined {timings['joined']:.0f} s): "
                  f"{cluster.topo.describe()}", flush=True)
            print("\n".join(status_lines(cluster)), flush=True)
            if args.then is None:
                print(f"state: {cluster.state_path}; remove it all with `lvsmail lab down`", flush=True)
                return 0
            env = dict(os.environ, LVSMAIL_LAB_PREFIX=cluster.topo.prefix,
                       LVSMAIL_LAB_STATE=str(cluster.state_path),
                       LVSMAIL_LAB_DIRECTOR_STATE=str((cluster.vip_holder() or cluster.directors[0]).state_dir))
            rc = subprocess.run(["sh", "-c", args.then], env=env).returncode
            problems = cluster.down()
            print(f"down after {time.monotonic() - t0:.0f} s" + ("".join(f"\n  {p}" for p in problems)), flush=True)
            return rc or (1 if problems else 0)
        path = one_state(args.state_dir, args.prefix)
        cluster = MailCluster.load(path)
        if args.verb == "status":
            print("\n".join(status_lines(cluster)))
            return 0
        problems = cluster.down()
        for p in problems:
            print(f"lvsmail: {p}", file=sys.stderr)
        if not problems:
            print(f"lab cluster {cluster.topo.prefix} removed: processes stopped, namespaces and {cluster.work} gone")
        return 1 if problems else 0
    except (LabUpError, TimeoutError) as exc:
        print(f"lvsmail: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"lvsmail: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
