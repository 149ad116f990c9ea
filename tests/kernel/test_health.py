"""Health checks against the real kernel (lab): a real server whose SMTP server stops leaves IPVS.

Runs on the TUN cluster the conftest already built (one topology, one director):
the director's cluster file gets three extra services on their own ports, each
with an SMTP check every second, and is reloaded with SIGHUP; afterwards the
original file is put back. The real servers get a second set of SMTP sinks for
those ports, so stopping one server's sink (closing its listening socket, as a
mail server that was shut down: new connections are refused, sessions already
accepted go on) touches nothing the forwarding tests use.

* ``health`` (weights 1/3/1/1): a failed server is removed, then comes back with
  its configured weight;
* ``drain`` (``quiescent: true``): a failed server stays with weight 0, and an
  SMTP session already established on it keeps working;
* ``sorry`` (two real servers, ``fallback``): when both are down the sorry server
  is installed — an SMTP server on the director itself at 127.0.0.1, as in
  ldirectord's own ``fallback=127.0.0.1:80`` example (IPVS delivers to a local
  destination without rewriting, so it answers on the VIP) — and removed as soon
  as one real server is back;
* ``resume`` (rs1 and rs2, timeout 3 s): each real server's SMTP sink is a
  process of its own, so SIGSTOP hangs exactly one server and SIGCONT resumes
  it. Its listen queue holds one connection, as a hung mail server's queue is
  soon full of clients: the first check after SIGSTOP fills it, and from then on
  the kernel drops new SYNs, and a check
  waits for the SYN's retransmission (1 s, then 3 s after the connect). A fresh
  check at each due time, beside the one still waiting out its timeout, brings
  the resumed server back within about one interval. (With room in the queue the
  kernel completes the handshake of the waiting check, which is greeted as soon
  as the sink resumes: that case is quick with or without the fresh check.)

Each step is verified three ways: the kernel's table (/proc/net/ip_vs in the
director's namespace), where new client sessions through the VIP land (the
sink's greeting names the real server), and ``lvsmail director status --json``
(run in this process, with the running director's health file). Detection and
recovery latencies are printed; they are not pass/fail, only generous deadlines are.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lvsmail.lab.cluster import LabService, ProcService, cluster_yaml, kernel_table
from lvsmail.lab.smtp import SmtpSinks, greeting_server
from lvsmail.lab.topology import CLIENT

pytestmark = pytest.mark.kernel

#: Ports of the health services (the conftest's services use 25, 2525 and 587).
HEALTH_PORT, DRAIN_PORT, SORRY_PORT, RESUME_PORT = 2601, 2602, 2603, 2604
#: Check interval (seconds); timeout, rise and fall as small as they go.
INTERVAL, TIMEOUT = 1, 2
#: The sorry server: an SMTP server on the director itself (see the module docstring).
SORRY = "127.0.0.1"
#: Functional deadline for a decision to reach the kernel: generous, emulation is slow and shared.
DEADLINE = 30.0
#: Sessions opened through the VIP to see where new mail goes.
SESSIONS = 8
#: The resume service's check: a timeout longer than the interval, so a hung check outlives its due time.
RESUME_INTERVAL, RESUME_TIMEOUT = 1, 3
#: How late a resumed server may be back in IPVS: one interval, plus a poll and a netlink round trip.
RESUME_SLACK = 0.3
#: How often the kernel table is read while waiting for the resumed server (seconds).
RESUME_POLL = 0.02
#: Real servers of the resume service, each with its own sink process.
RESUME_ROLES = ("rs1", "rs2")
#: The sink's listen() backlog: Linux queues backlog + 1 connections, then drops SYNs.
RESUME_BACKLOG = 0
#: SIGCONT this long after the removal: between two due times, when the check begun at the removal
#: has had its SYN retransmitted once (at 1 s) and will not again before its timeout (at 3 s).
RESUME_PHASE = 1.5

#: One SMTP sink as a process of its own (stdlib only: an interpreter start is seconds under emulation).
#: It greets with its name, answers 250 to every command and 221 to QUIT (RFC 5321 sections 4.2, 4.1.1.10).
SINK_PROCESS = """
import asyncio, socket, sys
name, port, backlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def session(reader, writer):
    writer.write(f"220 {name} lab sink\\r\\n".encode())
    try:
        while line := await reader.readline():
            if line[:4].upper() == b"QUIT":
                writer.write(b"221 2.0.0 bye\\r\\n")
                break
            writer.write(f"250 {name}\\r\\n".encode())
            await writer.drain()
    finally:
        writer.close()
async def main():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    # asyncio accepts at most its backlog per wake-up (none for 0), so the short queue is set afterwards.
    server = await asyncio.start_server(session, sock=sock, backlog=1)
    sock.listen(backlog)
    print("listening", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


@dataclass
class HealthLab:
    """The running cluster plus this module's services, sinks and measurements."""

    cluster: object  # the conftest's LabCluster
    sinks: SmtpSinks  # SMTP on the health ports of every real server
    sorry: SmtpSinks  # the sorry server on the director
    services: dict[str, LabService]
    resume: dict[str, subprocess.Popen]  # role -> its own sink process on RESUME_PORT
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def topo(self):
        """The lab topology."""
        return self.cluster.topo

    def key(self, port: int) -> str:
        """ipvsadm-style key of a service on the VIP."""
        return f"TCP {self.topo.vip}:{port}"

    def address(self, role: str) -> str:
        """A real server's address."""
        return self.topo.node(role).address

    def table(self) -> dict[str, ProcService]:
        """The director's IPVS table as the kernel shows it."""
        return kernel_table(self.topo)

    def state_dir(self) -> Path:
        """Where the running director publishes health."""
        return self.cluster.director.workdir / "state"


def _health_services(roles: list[str]) -> list[LabService]:
    """The three services this module adds to the cluster file."""
    check = dict(check=True, check_interval=INTERVAL, check_timeout=TIMEOUT, check_rise=1, check_fall=1)
    return [
        LabService("health", HEALTH_PORT, {"rs1": 1, "rs2": 3, "rs3": 1, "rs4": 1}, **check),
        LabService("drain", DRAIN_PORT, {r: 2 for r in roles}, quiescent=True, **check),
        LabService("sorry", SORRY_PORT, {"rs1": 1, "rs2": 1}, fallback=f"{SORRY}:{SORRY_PORT}", **check),
        LabService("resume", RESUME_PORT, {r: 1 for r in RESUME_ROLES}, check=True, check_interval=RESUME_INTERVAL,
                   check_timeout=RESUME_TIMEOUT, check_rise=1, check_fall=1),
    ]


def _sink_processes(topo, roles, port: int) -> dict[str, subprocess.Popen]:
    """One sink process per real server in ``roles``, each listening on ``port``; returns once all listen."""
    procs = {}
    try:
        for role in roles:
            argv = [sys.executable, "-c", SINK_PROCESS, role, str(port), str(RESUME_BACKLOG)]
            procs[role] = topo.popen(topo.node(role), argv, stdout=subprocess.PIPE, text=True)
        for role, proc in procs.items():
            line = proc.stdout.readline()  # "listening", or "" if it died
            if line.strip() != "listening":
                raise RuntimeError(f"the SMTP sink process of {role} did not start (exit {proc.poll()})")
    except BaseException:
        for proc in procs.values():
            topo.stop(proc)
        raise
    return procs


@pytest.fixture(scope="module")
def lab(clusters):
    """The TUN cluster with the health services loaded; the original cluster file is restored afterwards."""
    cluster = clusters("tun")
    topo, director = cluster.topo, cluster.director
    services = _health_services([rs.role for rs in topo.reals])
    original = cluster.config.read_text()
    name = re.search(r"^cluster: (\S+)$", original, re.M).group(1)
    sinks = SmtpSinks([(rs.role, rs.ns) for rs in topo.reals], ports=(HEALTH_PORT, DRAIN_PORT, SORRY_PORT)).start()
    sorry = SmtpSinks([("sorry", topo.director.ns)], ports=(SORRY_PORT,)).start()
    resume = _sink_processes(topo, RESUME_ROLES, RESUME_PORT)
    lab = HealthLab(cluster, sinks, sorry, {s.name: s for s in services}, resume)
    want = {lab.key(s.port): len(s.weights) for s in services}
    try:
        t0 = time.monotonic()
        director.write_config(cluster_yaml(topo, [*cluster.services, *services], name=name))
        director.reload()
        director.wait_for(lambda t: all(k in t and len(t[k].dests) == n for k, n in want.items()),
                          timeout=120, what=f"the health services {', '.join(want)} after SIGHUP")
        lab.timings["reload"] = time.monotonic() - t0
        yield lab
    finally:
        director.write_config(original)
        director.reload()
        try:
            director.wait_for(lambda t: not any(k in t for k in want), timeout=120,
                              what="the health services to leave after restoring the cluster file")
        finally:
            sinks.stop()
            sorry.stop()
            for proc in resume.values():
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                topo.stop(proc)


# -- helpers ------------------------------------------------------------------------

def _say(capsys, text: str) -> None:
    """A measurement line on the terminal, also under -q."""
    with capsys.disabled():
        print(f"\n  health: {text}", end="", flush=True)


def _watch(lab: HealthLab, predicate, what: str, since: float, timeout: float = DEADLINE):
    """Poll the kernel table every 50 ms until ``predicate(table)``; (table, seconds since ``since``)."""
    director = lab.cluster.director
    deadline = time.monotonic() + timeout
    while True:
        table = lab.table()
        if predicate(table):
            return table, time.monotonic() - since
        if not director.alive():
            pytest.fail(f"the director exited while waiting for {what}:\n{director.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}; kernel: {_dests(table)}\n"
                        f"director log:\n{director.log_tail()}")
        time.sleep(0.05)


def _until_listed(lab: HealthLab, key: str, address: str, listed: bool, since: float,
                  timeout: float = DEADLINE) -> float:
    """Seconds from ``since`` until ``address`` is (or is no longer) in service ``key``; /proc/net/ip_vs every 20 ms.

    One thread in the director's namespace does all the reads (no namespace switch per poll), through
    /proc/thread-self: /proc/net is the main thread's, in this process's own namespace.
    """
    from lvsmail.lab.cluster import parse_proc_ip_vs

    def poll() -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            svc = parse_proc_ip_vs(Path("/proc/thread-self/net/ip_vs").read_text()).get(key)
            if (svc is not None and svc.dest(address) is not None) == listed:
                return time.monotonic() - since
            time.sleep(RESUME_POLL)
        return None

    seconds = lab.topo.call(lab.topo.director, poll)
    if seconds is None:
        pytest.fail(f"{address} {'not back' if listed else 'not removed'} in {key} within {timeout:.0f} s; "
                    f"kernel: {_dests(lab.table())}\ndirector log:\n{lab.cluster.director.log_tail()}")
    return seconds


def _dests(table: dict[str, ProcService]) -> dict[str, dict[str, int]]:
    """Address → weight per service, for failure messages."""
    return {k: {d.address: d.weight for d in s.dests} for k, s in table.items()}


def _weights(table: dict[str, ProcService], key: str) -> dict[str, int]:
    """Address → weight of one service (empty when the service is missing)."""
    svc = table.get(key)
    return {d.address: d.weight for d in svc.dests} if svc else {}


def _greetings(lab: HealthLab, port: int, count: int = SESSIONS) -> list[str]:
    """Open ``count`` SMTP sessions one after another through the VIP; who greeted each (or the error)."""
    vip = lab.topo.vip

    def go() -> list[str]:
        out = []
        for _ in range(count):
            try:
                with socket.create_connection((vip, port), timeout=10, source_address=(CLIENT, 0)) as s:
                    f = s.makefile("rb")
                    line = f.readline().decode(errors="replace")
                    s.sendall(b"QUIT\r\n")
                    f.readline()
                out.append(greeting_server(line[4:]) or f"no greeting: {line!r}")
            except OSError as exc:
                out.append(f"error: {exc}")
        return out

    return lab.topo.call(lab.topo.client, go)


class Session:
    """One SMTP session from the client through the VIP, kept open to talk on later."""

    def __init__(self, lab: HealthLab, port: int) -> None:
        self.sock = lab.topo.socket(lab.topo.client, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect((lab.topo.vip, port))
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline().decode(errors="replace")
        self.server = greeting_server(self.greeting[4:])

    def command(self, line: str) -> str:
        """Send one command, return the (single-line) reply."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self.file.readline().decode(errors="replace").strip()

    def close(self) -> None:
        """Close without QUIT."""
        self.file.close()
        self.sock.close()


def _status(lab: HealthLab) -> dict:
    """``lvsmail director status --json --state-dir DIR``, the command itself, run here in the director namespace."""
    from click.testing import CliRunner

    from lvsmail.commands.director import status

    result = lab.topo.call(lab.topo.director, CliRunner().invoke, status,
                           ["--json", "--state-dir", str(lab.state_dir())])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _status_entry(lab: HealthLab, port: int, address: str, want) -> dict:
    """The status entry of one real server once ``want(entry)`` holds (the health file follows the kernel)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        data = _status(lab)
        svc = next((s for s in data["services"] if s["key"] == lab.key(port)), None)
        entry = next((r for r in svc["realservers"] if r["address"] == address), None) if svc else None
        if entry is not None and want(entry):
            return entry
        if time.monotonic() > deadline:
            pytest.fail(f"status never showed the expected health of {address}:{port}; last: {entry}")
        time.sleep(0.2)


def _restore(lab: HealthLab, port: int) -> None:
    """Every real server listening on ``port`` again (after a failed test too)."""
    for rs in lab.topo.reals:
        lab.sinks.start_listening(rs.role, [port])


# -- the tests ------------------------------------------------------------------------

def test_stopped_smtp_server_is_removed_and_returns_with_its_weight(lab, capsys):
    key, victim = lab.key(HEALTH_PORT), "rs2"
    addr, weight = lab.address(victim), lab.services["health"].weights[victim]
    configured = {lab.address(r): w for r, w in lab.services["health"].weights.items()}
    try:
        assert _weights(lab.table(), key) == configured
        before = _greetings(lab, HEALTH_PORT)
        assert victim in before, f"{victim} got no session before it failed: {before}"

        t0 = time.monotonic()
        lab.sinks.stop_listening(victim, [HEALTH_PORT])
        table, detected = _watch(lab, lambda t: key in t and t[key].dest(addr) is None,
                                 f"{victim} removed from {key}", t0)
        # Only the failed server left; the others keep their configured weights.
        assert _weights(table, key) == {a: w for a, w in configured.items() if a != addr}
        after = _greetings(lab, HEALTH_PORT)
        assert victim not in after and all(s in {"rs1", "rs3", "rs4"} for s in after), after

        entry = _status_entry(lab, HEALTH_PORT, addr, lambda e: (e["health"] or {}).get("health") == "down")
        assert entry["weight"] is None  # listed although not in the kernel
        assert entry["health"]["configured_weight"] == weight
        assert "refused" in entry["health"]["last_failure"], entry["health"]["last_failure"]

        t1 = time.monotonic()
        lab.sinks.start_listening(victim, [HEALTH_PORT])
        table, recovered = _watch(lab, lambda t: _weights(t, key) == configured,
                                  f"{victim} back in {key} with weight {weight}", t1)
        again = _greetings(lab, HEALTH_PORT)
        assert victim in again, f"{victim} got no new session after recovery: {again}"
        entry = _status_entry(lab, HEALTH_PORT, addr, lambda e: (e["health"] or {}).get("health") == "up")
        assert (entry["weight"], entry["health"]["effective_weight"]) == (weight, weight)
    finally:
        _restore(lab, HEALTH_PORT)
    lab.timings.update(remove=detected, readd=recovered)
    _say(capsys, f"removal {detected:.2f} s after the SMTP server stopped, re-added with weight {weight} "
                 f"{recovered:.2f} s after it restarted (interval {INTERVAL} s, fall 1, rise 1); "
                 f"sessions before {dict(Counter(before))}, while down {dict(Counter(after))}, "
                 f"after {dict(Counter(again))}")


def test_quiescent_server_keeps_weight_zero_and_its_established_session(lab, capsys):
    key, victim = lab.key(DRAIN_PORT), "rs3"
    addr, weight = lab.address(victim), lab.services["drain"].weights[victim]
    configured = {lab.address(r): w for r, w in lab.services["drain"].weights.items()}
    held: list[Session] = []
    try:
        # WLC sends each new session to the least loaded server: within four, one lands on the victim.
        for _ in range(len(lab.topo.reals)):
            held.append(Session(lab, DRAIN_PORT))
            if held[-1].server == victim:
                break
        session = next((s for s in held if s.server == victim), None)
        assert session is not None, f"no session landed on {victim}: {[s.server for s in held]}"

        t0 = time.monotonic()
        lab.sinks.stop_listening(victim, [DRAIN_PORT])
        table, detected = _watch(lab, lambda t: _weights(t, key).get(addr) == 0, f"{victim} at weight 0 in {key}", t0)
        assert _weights(table, key) == {**configured, addr: 0}
        # The kernel still counts the held session on the quiescent server: it drains, it is not cut.
        assert table[key].dest(addr).active >= 1, _dests(table)
        after = _greetings(lab, DRAIN_PORT)
        assert victim not in after and all(s in {"rs1", "rs2", "rs4"} for s in after), after
        assert session.command("NOOP").startswith("250"), "the established session was cut"

        entry = _status_entry(lab, DRAIN_PORT, addr, lambda e: (e["health"] or {}).get("health") == "quiescent")
        assert (entry["weight"], entry["health"]["effective_weight"]) == (0, 0)
        assert entry["health"]["configured_weight"] == weight
        assert "refused" in entry["health"]["last_failure"], entry["health"]["last_failure"]

        t1 = time.monotonic()
        lab.sinks.start_listening(victim, [DRAIN_PORT])
        _, recovered = _watch(lab, lambda t: _weights(t, key) == configured,
                              f"{victim} back to weight {weight} in {key}", t1)
        # The session lived through the whole episode.
        assert session.command("NOOP").startswith("250")
        assert session.command("QUIT").startswith("221")
    finally:
        for s in held:
            s.close()
        _restore(lab, DRAIN_PORT)
    lab.timings.update(quiesce=detected, unquiesce=recovered)
    _say(capsys, f"quiescent: weight 0 {detected:.2f} s after the SMTP server stopped (held session kept, "
                 f"new sessions {dict(Counter(after))}), weight {weight} again {recovered:.2f} s after restart")


def test_all_real_servers_down_installs_the_fallback_until_one_returns(lab, capsys):
    key = lab.key(SORRY_PORT)
    pool = list(lab.services["sorry"].weights)
    addrs = {r: lab.address(r) for r in pool}
    try:
        assert _weights(lab.table(), key) == {a: 1 for a in addrs.values()}

        t0 = time.monotonic()
        for role in pool:
            lab.sinks.stop_listening(role, [SORRY_PORT])
        table, to_sorry = _watch(lab, lambda t: list(_weights(t, key)) == [SORRY],
                                 f"only the fallback {SORRY} in {key}", t0)
        down = _greetings(lab, SORRY_PORT)
        assert down == ["sorry"] * SESSIONS, down
        for addr in addrs.values():
            entry = _status_entry(lab, SORRY_PORT, addr, lambda e: (e["health"] or {}).get("health") == "down")
            assert entry["weight"] is None and "refused" in entry["health"]["last_failure"]

        t1 = time.monotonic()
        lab.sinks.start_listening(pool[0], [SORRY_PORT])
        table, from_sorry = _watch(lab, lambda t: _weights(t, key) == {addrs[pool[0]]: 1},
                                   f"{pool[0]} back and the fallback gone from {key}", t1)
        one = _greetings(lab, SORRY_PORT)
        assert one == [pool[0]] * SESSIONS, one

        lab.sinks.start_listening(pool[1], [SORRY_PORT])
        _watch(lab, lambda t: _weights(t, key) == {a: 1 for a in addrs.values()},
               f"both real servers back in {key}", time.monotonic())
    finally:
        _restore(lab, SORRY_PORT)
    lab.timings.update(fallback_in=to_sorry, fallback_out=from_sorry)
    _say(capsys, f"fallback: installed {to_sorry:.2f} s after both SMTP servers stopped, removed "
                 f"{from_sorry:.2f} s after {pool[0]} restarted (reload with {len(lab.services)} new services took "
                 f"{lab.timings['reload']:.1f} s)")


def test_a_server_resumed_after_sigstop_is_back_within_one_interval(lab, capsys):
    key, victim = lab.key(RESUME_PORT), RESUME_ROLES[0]
    addr, pid = lab.address(victim), lab.resume[victim].pid
    others = {lab.address(r): 1 for r in RESUME_ROLES if r != victim}
    assert _weights(lab.table(), key) == {addr: 1, **others}
    try:
        stopped = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        # Seen within 20 ms of the removal, which is when the next check begins: SIGCONT lands mid-way.
        removed = _until_listed(lab, key, addr, False, stopped)
        assert _weights(lab.table(), key) == others  # only the hung server left
        time.sleep(max(0.0, stopped + removed + RESUME_PHASE - time.monotonic()))
        t0 = time.monotonic()
        os.kill(pid, signal.SIGCONT)
        back = _until_listed(lab, key, addr, True, t0)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _weights(lab.table(), key) == {addr: 1, **others}
    lab.timings.update(hung_removed=removed, resumed=back)
    _say(capsys, f"resume: {victim} removed {removed:.2f} s after SIGSTOP, SIGCONT {RESUME_PHASE} s later, "
                 f"back in IPVS {back:.2f} s after SIGCONT (listen queue full, interval {RESUME_INTERVAL} s, "
                 f"timeout {RESUME_TIMEOUT} s, rise 1, fall 1; bound {RESUME_INTERVAL + RESUME_SLACK:.1f} s)")
    assert back <= RESUME_INTERVAL + RESUME_SLACK, (
        f"{victim} back {back:.2f} s after SIGCONT, more than one interval ({RESUME_INTERVAL} s) + {RESUME_SLACK} s")
