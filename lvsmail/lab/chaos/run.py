"""``lvsmail lab chaos``: the seeded fault run against the whole lab cluster, and its accounting.

Order of a run: ``lab up`` with one spare real server (for join/leave) -> the
clients start (MTA-like senders, IMAP readers, held SMTP sessions) -> each
fault of the schedule in turn: inject, hold, heal, wait until the cluster has
recovered -> the clients stop producing, every fault is healed and every
queue flushed, the senders finish their retries -> Message-ID accounting over
the shared Maildirs -> report (JSON, text, plot) -> ``lab down``.

The assertion the issue asks for is the exit status: 0 only when no accepted
message is lost and every duplicate is explained by an ambiguous attempt
(the connection died after the final dot: SMTP's at-least-once delivery).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvsmail.lab.chaos.schedule import DIRECTOR_KINDS, KINDS, FaultSpec, make_schedule
from lvsmail.lab.topology import GW_FRONT, MODES

#: Bounds of the run's waits (emulation is slow, a shared machine slower still).
RECOVER_TIMEOUT = 240.0
FINAL_TIMEOUT = 300.0
#: Seconds the cluster must stay whole before a fault counts as recovered. A stack can look whole for a
#: moment while a takeover is still on its way: after a split brain heals, heartbeat declares its peer
#: dead up to a deadtime (10 s) later and takes the VIP a resource script later, so both directors hold
#: it again (seen in a comparison run: that split brain was counted as the next fault's). 20 s covers the
#: slowest stack's detection plus its first step under emulation, and is the same for every stack.
SETTLE = 20.0
#: Postfix's free-space floor that makes smtpd answer 452 4.3.1 (a queue file system "full").
FULL_QUEUE_MINFREE = str(10 ** 15)
#: Messages put into a real server's queue by the queue-full fault.
QUEUE_FILL = 5


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class FaultRecord:
    """One executed fault: the plan, what happened and when (time.time() seconds)."""

    spec: FaultSpec
    target: str = ""  # resolved target (the master director's name for director kinds)
    injected: float = 0.0
    healed: float = 0.0
    recovered: float = 0.0
    notes: list[str] = field(default_factory=list)
    held_open: list[int] = field(default_factory=list)  # held sessions established at injection
    held_survived: list[int] = field(default_factory=list)


class ChaosRun:
    """Faults against a running :class:`~lvsmail.lab.cluster_up.MailCluster`."""

    def __init__(self, cluster, say=_say, clients=None) -> None:
        self.cluster, self.say, self.clients = cluster, say, clients
        self.topo = cluster.topo
        #: Planned faults that have no meaning for the cluster's director stack, with the stack's reason:
        #: reported as "n/a", never executed and never silently dropped.
        self.not_applicable: list[tuple[FaultSpec, str]] = []

    # -- helpers ----------------------------------------------------------------------------------

    def _ip(self, ns: str, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "ip", *args], capture_output=True, timeout=60, check=True)

    def director(self, name: str):
        """A director by name (``director1``)."""
        return self.cluster.directors[int(name[-1]) - 1]

    def master(self):
        """The director holding the VIP now."""
        d = self.cluster.vip_holder()
        if d is None:
            raise RuntimeError("no director holds the VIP")
        return d

    def unmet(self, role: str | None = None, weight: int | None = None, absent: str | None = None) -> list[str]:
        """What keeps the cluster from being whole: both directors alive with complete tables (every
        service of the lab present, every listed server up; only the VIP holder's table when the stack
        keeps none on its standby), director 1 alone holding the VIP when the stack fails back (else
        exactly one director), plus the optional conditions (``role``'s SMTP weight, ``role`` present,
        ``absent`` gone). Empty when all hold."""
        from lvsmail.lab.cluster_up import SERVICES

        addresses = {rs.role: rs.address for rs in self.topo.reals}
        unmet = []
        holders = self.cluster.vip_holders()
        checked = self.cluster.directors if self.cluster.stack.table_on_standby else holders
        for d in self.cluster.directors:
            if not self.cluster.director_alive(d):
                unmet.append(f"director{d.number} not running")
                continue
            if d not in checked:
                continue
            table = self.cluster.table(d)
            # A table without a service is not whole (a takeover whose table never came: the seed's
            # ldirectord not started on the new holder).
            unmet += [f"director{d.number} TCP {self.topo.vip}:{port}: absent" for _, port, _ in SERVICES
                      if f"TCP {self.topo.vip}:{port}" not in table]
            for key, svc in table.items():
                if not key.startswith(f"TCP {self.topo.vip}:"):
                    continue
                dests = {x.address: x.weight for x in svc.dests}
                where = f"director{d.number} {key}"
                unmet += [f"{where}: {rs.role} {'weight 0' if rs.address in dests else 'absent'}"
                          for rs in self.cluster.reals if dests.get(rs.address, 0) == 0]
                if role is not None and key.endswith(":25") and weight is not None \
                        and dests.get(addresses[role]) != weight:
                    unmet.append(f"{where}: {role} weight {dests.get(addresses[role])}, not {weight}")
                if role is not None and weight is None and addresses[role] not in dests:
                    unmet.append(f"{where}: {role} absent")
                if absent is not None and addresses[absent] in dests:
                    unmet.append(f"{where}: {absent} still present")
        if self.cluster.stack.failback and holders != [self.cluster.directors[0]]:
            unmet.append("VIP on " + (", ".join(f"director{d.number}" for d in holders) or "no director")
                         + " (director1 alone after failback)")
        elif not self.cluster.stack.failback and len(holders) != 1:
            # Without failback (heartbeat's auto_failback off) either director may keep the VIP.
            unmet.append("VIP on " + (", ".join(f"director{d.number}" for d in holders) or "no director")
                         + " (exactly one director)")
        return unmet

    def wait_whole(self, what: str, timeout: float, settle: float = 0.0, **conditions) -> float:
        """Poll :meth:`unmet` until nothing is, and stays so for ``settle`` seconds; the time it became
        true (the start of that quiet period), or TimeoutError saying what was not."""
        deadline = time.monotonic() + timeout
        since = None  # time.time() and time.monotonic() when unmet last became empty
        while True:
            unmet = self.unmet(**conditions)
            if unmet:
                since = None
            elif since is None:
                since = (time.time(), time.monotonic())
            if since is not None and time.monotonic() - since[1] >= settle:
                return since[0]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}: "
                                   + ("; ".join(unmet[:6]) if unmet else f"whole, but not for {settle:.0f} s"))
            time.sleep(0.5)

    # -- faults -----------------------------------------------------------------------------------

    def inject(self, rec: FaultRecord) -> None:
        """Make the fault happen."""
        c, kind, role = self.cluster, rec.spec.kind, rec.spec.target
        rec.target = role
        if kind == "smtp_stop":
            c.postfix(role).stop()
        elif kind == "imap_stop":
            c.stop_process(f"{role}-dovecot")
        elif kind == "rs_kill":
            c.postfix(role).kill()
            c.stop_process(f"{role}-dovecot", sig=signal.SIGKILL, wait=5)
            c.stop_process(f"{role}-http", sig=signal.SIGKILL, wait=5)
            self._ip(self.topo.node(role).ns, "link", "set", "eth0", "down")
        elif kind == "rs_hang":
            c.postfix(role).freeze()
        elif kind == "queue_full":
            # First the queue fills: accepted mail stays there (deliveries deferred); see midway().
            c.postfix(role).postconf("defer_transports = virtual")
        elif kind in ("director_kill", "director_link"):
            d = self.master()
            rec.target = f"director{d.number}"
            if kind == "director_kill":
                c.kill_director(d)
            else:
                for link in ("eth0", "eth1"):
                    self._ip(d.ns, "link", "set", link, "down")
        elif kind == "director_split":
            rec.target = "director1|director2"
            for d in c.directors:
                # The stack's failover traffic (VRRP, heartbeat's UDP) dropped: each stops hearing the other.
                _nft(d.ns, "add table inet labsplit",
                     "add chain inet labsplit input { type filter hook input priority 0 ; }",
                     f"add rule inet labsplit input {c.stack.split_rule} drop")
        elif kind == "reload":
            c.weights[role] = 3
            c.reload()
        elif kind == "join_leave":
            c.join([self.topo.node(role)])
            c.start_mail(role)
            c.save()
        else:
            raise ValueError(f"unknown fault {kind}")

    def midway(self, rec: FaultRecord) -> None:
        """Half-way through the hold: a queue that filled up now refuses new mail."""
        if rec.spec.kind == "queue_full":
            pf = self.cluster.postfix(rec.spec.target)
            # Mail this server accepted and cannot deliver yet: straight to it, as an MTA whose
            # connection landed there would have (the VIP's persistence may send nobody there now).
            address = self.topo.node(rec.spec.target).address
            sent = self.clients.send_direct(address, QUEUE_FILL)
            rec.notes.append(f"{sum(m.accepted_at is not None for m in sent)} of {len(sent)} message(s) sent "
                             f"straight to {rec.spec.target} accepted")
            # queue_minfree above the free space makes smtpd answer 452 4.3.1, as on a full queue
            # file system (RFC 3463 X.3.1: mail system full).
            pf.postconf(f"queue_minfree = {FULL_QUEUE_MINFREE}")
            rec.notes.append(f"{pf.queued()} message(s) held in the queue, then new mail refused with 452 4.3.1")

    def heal(self, rec: FaultRecord) -> None:
        """Undo the fault (restart, link up, failback ...)."""
        c, kind, role = self.cluster, rec.spec.kind, rec.spec.target
        if kind == "smtp_stop":
            c.postfix(role).start()
        elif kind == "imap_stop":
            ns = self.topo.node(role).ns
            c.dovecot(role).start(lambda argv, **kw: c.popen(f"{role}-dovecot", ns, argv,
                                                             c.rs_dir(role) / "dovecot.stderr"))
        elif kind == "rs_kill":
            ns = self.topo.node(role).ns
            self._ip(ns, "link", "set", "eth0", "up")
            # IPv4 routes through a link that went down are gone (fib_disable_ip): the boot scripts' route.
            self._ip(ns, "route", "replace", "default", "via", c.rs_gateway())
            c.start_mail(role)
        elif kind == "rs_hang":
            c.postfix(role).thaw()
        elif kind == "queue_full":
            pf = c.postfix(role)
            pf.postconf("defer_transports =", "queue_minfree = 0")
            pf.flush()
        elif kind == "director_kill":
            c.start_director(self.director(rec.target))
            c.save()
        elif kind == "director_link":
            d = self.director(rec.target)
            for link in ("eth0", "eth1"):
                self._ip(d.ns, "link", "set", link, "up")
            self._ip(d.ns, "route", "replace", "default", "via", GW_FRONT)
        elif kind == "director_split":
            for d in c.directors:
                _nft(d.ns, "delete table inet labsplit")
        elif kind == "reload":
            c.weights.pop(role, None)
            c.reload()
        elif kind == "join_leave":
            rc, output = c.leave(role)
            if rc != 0:
                rec.notes.append(f"leave exited {rc}: {output.strip()[-300:]}")
            c.postfix(role).stop()
            c.stop_process(f"{role}-dovecot")
            c.stop_process(f"{role}-http")

    def recovery_conditions(self, rec: FaultRecord) -> dict:
        """What :meth:`unmet` must also see after ``rec`` was healed."""
        if rec.spec.kind == "join_leave":
            return {"absent": rec.spec.target}
        if rec.spec.kind == "reload":
            return {"role": rec.spec.target, "weight": 1}
        return {}

    def wait_applied(self, rec: FaultRecord, timeout: float = 120) -> None:
        """For faults whose effect must be seen before holding: the reload's weight, the joined server."""
        kind, role = rec.spec.kind, rec.spec.target
        t0 = time.time()
        try:
            if kind == "reload":
                self.wait_whole(f"weight 3 for {role} in both tables", timeout, role=role, weight=3)
                rec.notes.append(f"reload applied in both kernels after {time.time() - t0:.1f} s")
            elif kind == "join_leave":
                self.wait_whole(f"{role} in both tables", timeout, role=role)
                rec.notes.append(f"registered {role} in both tables after {time.time() - t0:.1f} s")
        except TimeoutError as exc:
            rec.notes.append(str(exc))

    # -- the run ----------------------------------------------------------------------------------

    def execute(self, faults: list[FaultSpec], clients, held, start: float) -> list[FaultRecord]:
        """Every planned fault in turn, each at its planned time or when the previous one has recovered.

        The whole plan always runs (the same seed gives the same faults on any machine); on a slow
        machine the run simply takes longer than its nominal duration.
        """
        records = []
        for spec in faults:
            reason = self.cluster.stack.not_applicable(spec.kind)
            if reason is not None:
                self.not_applicable.append((spec, reason))
                self.say(f"  fault {spec.index}: {spec.kind} is n/a for the {self.cluster.stack.name} stack: {reason}")
                continue
            wait = start + spec.at - time.time()
            if wait > 0:
                time.sleep(wait)
            rec = FaultRecord(spec)
            rec.held_open = held.open_at(time.time()) if spec.kind in DIRECTOR_KINDS else []
            rec.injected = time.time()
            self.inject(rec)
            self.say(f"  t={rec.injected - start:6.1f} s  fault {spec.index}: {spec.kind} on {rec.target} "
                     f"(hold {spec.hold:.0f} s)")
            self.wait_applied(rec)
            time.sleep(max(0.0, rec.injected + spec.hold / 2 - time.time()))
            self.midway(rec)
            time.sleep(max(0.0, rec.injected + spec.hold - time.time()))
            rec.healed = time.time()
            self.heal(rec)
            try:
                rec.recovered = self.wait_whole(f"recovery from {spec.kind}", RECOVER_TIMEOUT, SETTLE,
                                                **self.recovery_conditions(rec))
            except TimeoutError as exc:
                rec.notes.append(str(exc))
                rec.recovered = 0.0
            if rec.held_open:
                rec.held_survived = held.survived(rec.held_open, max(rec.recovered, rec.healed))
            state = (f"recovered {rec.recovered - rec.healed:.1f} s after healing" if rec.recovered
                     else "NOT recovered")
            self.say(f"  t={time.time() - start:6.1f} s  healed {spec.kind} on {rec.target}: {state}"
                     + "".join(f"; {n}" for n in rec.notes))
            records.append(rec)
        return records

    def restore_all(self) -> None:
        """Before the accounting: every real server running, thawed, its queue flushed."""
        c = self.cluster
        for rs in c.reals:
            pf = c.postfix(rs.role)
            pf.thaw()
            if pf.master_pid() is None:
                pf.start()
            pf.flush()

    def wait_queues_empty(self, timeout: float = FINAL_TIMEOUT) -> dict[str, int]:
        """Until every real server's Postfix queue is empty (flushing now and then); what is left."""
        deadline = time.monotonic() + timeout
        while True:
            left = {rs.role: self.cluster.postfix(rs.role).queued() for rs in self.topo.reals
                    if self.cluster.rs_dir(rs.role).exists()}
            if not any(left.values()) or time.monotonic() > deadline:
                return {k: v for k, v in left.items() if v}
            for role, n in left.items():
                if n:
                    self.cluster.postfix(role).flush()
            time.sleep(2)


def _nft(ns: str, *commands: str) -> None:
    for cmd in commands:
        subprocess.run(["ip", "netns", "exec", ns, "nft", *cmd.split()], capture_output=True, text=True,
                       timeout=60, check=True)


def not_applicable_fields(stack_name: str, skipped: list[tuple[FaultSpec, str]]) -> dict:
    """The report's stack fields: ``stack``, ``not_applicable`` {kind: reason} and every planned fault
    that was n/a (so a comparison shows what the same schedule held for this stack)."""
    return {
        "stack": stack_name,
        "not_applicable": {spec.kind: reason for spec, reason in skipped},
        "not_applicable_faults": [{"index": spec.index, "kind": spec.kind, "target": spec.target,
                                   "planned_at": spec.at, "reason": reason} for spec, reason in skipped],
    }


def run_chaos(duration: float, seed: int, mode: str = "tun", realservers: int = 4, out_dir: Path | None = None,
              kinds: tuple[str, ...] | None = None, say=_say, stack: str = "lvsmail") -> dict:
    """The whole run; returns the report (also written to ``out_dir``)."""
    from lvsmail.lab.chaos.clients import HeldSessions, MtaClients
    from lvsmail.lab.chaos.report import build_report, plot, text_summary
    from lvsmail.lab.cluster_up import MailCluster

    out_dir = Path(out_dir or os.environ.get("LVSMAIL_LAB_OUT") or "lab-out").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = MailCluster(mode, realservers, spare=1, stack=stack)
    reals = [rs.role for rs in cluster.reals]
    faults = make_schedule(seed, duration, reals, cluster.spares[0].role, kinds=kinds)
    say(f"chaos: stack {stack}, seed {seed}, {duration:.0f} s, {len(faults)} faults planned: "
        + ", ".join(f"{f.kind}({f.target})" for f in faults))
    clients = held = None
    t_setup = time.monotonic()
    try:
        timings = cluster.up(say=say)
        say(f"cluster up in {timings['ready']:.0f} s")
        clients = MtaClients(cluster.topo.client.ns, cluster.topo.vip, cluster.clients(), seed=seed).start()
        run = ChaosRun(cluster, say, clients)
        held = HeldSessions(cluster.topo.client.ns, cluster.topo.vip, cluster.clients()).start()
        start = time.time()
        records = run.execute(faults, clients, held, start)
        # Let the run last its duration even when faults ended early.
        time.sleep(max(0.0, start + duration - time.time()))
        end_faults = time.time()
        say(f"faults over after {end_faults - start:.0f} s; finishing: queues flushed, senders' retries ...")
        clients.stop_producing()
        run.restore_all()
        unaccepted = clients.drain(FINAL_TIMEOUT)
        held.stop()
        clients.stop()
        queues_left = run.wait_queues_empty()
        found = cluster.store.message_ids()
        report = build_report(seed=seed, duration=duration, mode=mode, realservers=realservers, faults=faults,
                              records=records, clients=clients, held=held, found=found, start=start,
                              end=end_faults, queues_left=queues_left, unaccepted=unaccepted,
                              setup_seconds=timings["ready"])
        report["run_seconds"] = round(time.monotonic() - t_setup, 1)
        report.update(not_applicable_fields(stack, run.not_applicable))
        path = out_dir / f"chaos-{stack}-seed{seed}-{int(start)}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        report["files"] = {"json": str(path)}
        report["files"]["plot"] = plot(report, clients, out_dir / f"chaos-{stack}-seed{seed}-{int(start)}.png")
        path.write_text(json.dumps(report, indent=2) + "\n")
        say(text_summary(report))
        for kind, reason in report["not_applicable"].items():
            say(f"  {kind}: n/a for the {stack} stack ({reason})")
        return report
    finally:
        if held is not None:
            held.stop()
        if clients is not None:
            try:
                clients.stop()
            except RuntimeError as exc:
                say(f"clients: {exc}")
        logs = cluster.save_logs()
        if logs is not None:
            say(f"logs of every daemon copied to {logs}")
        problems = cluster.down(say=say)
        for p in problems:
            say(f"teardown: {p}")


def main(argv: list[str] | None = None) -> int:
    """``python3 -m lvsmail.lab.chaos.run``: here with IPVS, else in the lab VM (same arguments)."""
    from lvsmail.lab import stacks, vm

    parser = argparse.ArgumentParser(prog="lvsmail lab chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", choices=MODES, default="tun")
    parser.add_argument("--stack", choices=stacks.names(), default=stacks.DEFAULT)
    parser.add_argument("--realservers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kinds", default=None, help=f"comma-separated subset of: {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
    if kinds and any(k not in KINDS for k in kinds):
        print(f"lvsmail: unknown fault kind in --kinds; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    if os.environ.get("LVSMAIL_IN_LAB") == "1" or vm.host_capability().ok:
        report = run_chaos(args.duration, args.seed, args.mode, args.realservers, args.out, kinds,
                           stack=args.stack)
        return 0 if report["ok"] else 1
    cmd = [sys.executable, "-m", "lvsmail.lab.chaos.run", *(argv if argv is not None else sys.argv[1:])]
    return vm.run(cmd, timeout=args.duration + 2400, memory="3G",
                  out_dir=args.out.resolve() if args.out else None)


if __name__ == "__main__":
    sys.exit(main())
