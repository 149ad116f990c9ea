"""Two directors in network namespaces on one bridge, each running the real Director with failover (IPVS faked).

Layout (namespaces prefixed ``vr-``)::

    vr-a eth0 192.0.2.1 ─┐
    vr-b eth0 192.0.2.2 ─┼─ br0 in vr-br
    vr-c eth0 192.0.2.100┘   (the client: watches gratuitous ARP, connects to the VIP)

The VIP 192.0.2.33/24 (VRID 51) and 2001:db8::33/64 (VRID 52) move between a and b.
Every wait polls the namespaces instead of sleeping a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvsmail.net import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

PREFIX = f"vr-{os.getpid() % 10000}"
NS = {name: f"{PREFIX}-{name}" for name in ("br", "a", "b", "c")}
ADDR = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.100"}
VIP, VIP6 = "192.0.2.33", "2001:db8::33"
ROOT = Path(__file__).resolve().parents[2]
NODE = Path(__file__).with_name("vrrp_node.py")

CLUSTER = """\
cluster: pair-{me}
vips: [{vip}]
services: []
failover:
  interface: eth0
  instances:
    - name: mail
      vrid: 51
      priority: {priority}
      advert_interval: 0.1
      preempt: {preempt}
      vips: [{vip}/24]
{options}      garp: {{count: 3, interval: 0.1}}
      notify:
        master: [/bin/sh, -c, 'echo "$*" >> {notes}', notify]
        backup: [/bin/sh, -c, 'echo "$*" >> {notes}', notify]
        fault: [/bin/sh, -c, 'echo "$*" >> {notes}', notify]
{extra}"""
V6 = """\
    - name: mail6
      vrid: 52
      priority: {priority}
      advert_interval: 0.1
      vips: ["{vip6}/64"]
"""


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """Run ``ip`` (in a namespace) and return its output."""
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="module")
def segment():
    """The bridge and three hosts; removed afterwards, also after a failure."""
    try:
        for name in NS.values():
            netns.create_netns(name)
    except OSError as exc:
        for name in NS.values():
            netns.remove_netns(name)
        pytest.skip(f"cannot create network namespaces: {exc}")
    try:
        ip("link", "add", "br0", "type", "bridge", ns=NS["br"])
        ip("link", "set", "br0", "up", ns=NS["br"])
        for host in ("a", "b", "c"):
            port = f"p{host}"
            ip("link", "add", port, "netns", NS["br"], "type", "veth", "peer", "name", "eth0", "netns", NS[host])
            ip("link", "set", port, "master", "br0", "up", ns=NS["br"])
            netns.run_in_netns(NS[host], _no_dad)
            ip("addr", "add", f"{ADDR[host]}/24", "dev", "eth0", ns=NS[host])
            ip("link", "set", "eth0", "up", ns=NS[host])
            ip("link", "set", "lo", "up", ns=NS[host])
        yield
    finally:
        for name in NS.values():
            netns.remove_netns(name)


def _no_dad() -> None:
    """Link-local addresses usable at once (no duplicate address detection wait) in this namespace."""
    for conf in ("default", "all"):
        Path(f"/proc/sys/net/ipv6/conf/{conf}/accept_dad").write_text("0")


class Node:
    """One director process in its namespace."""

    def __init__(self, name: str, tmp: Path, priority: int, preempt: bool = True, v6: bool = False,
                 options: str = "") -> None:
        self.name, self.ns = name, NS[name]
        self.dir = tmp / name
        self.dir.mkdir(exist_ok=True)
        self.file = self.dir / "cluster.yaml"
        self.notes = self.dir / "notify.log"
        self.v6 = v6
        self.options = options  # extra instance settings (unicast peers, key file), indented
        self.write(priority, preempt)
        self.proc: subprocess.Popen | None = None

    def write(self, priority: int, preempt: bool = True) -> None:
        extra = V6.format(priority=priority, vip6=VIP6) if self.v6 else ""
        self.file.write_text(CLUSTER.format(me=self.name, vip=VIP, priority=priority, notes=self.notes,
                                            preempt="true" if preempt else "false", extra=extra,
                                            options=self.options))

    def start(self) -> Node:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.log = open(self.dir / "director.log", "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, str(NODE), str(self.file),
                                      str(self.dir / "state")], env=env, stdout=self.log, stderr=self.log)
        return self

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def state(self, instance: str = "mail") -> dict | None:
        path = self.dir / "state" / "cluster.failover.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return next((i for i in data["instances"] if i["name"] == instance), None)

    def role(self, instance: str = "mail") -> str | None:
        st = self.state(instance)
        return st["role"] if st else None

    def has_vip(self, vip: str = VIP) -> bool:
        return f" {vip}/" in ip("-o", "addr", "show", "dev", "eth0", ns=self.ns)

    def logtext(self) -> str:
        return (self.dir / "director.log").read_text(errors="replace")


@pytest.fixture
def nodes(segment, tmp_path):
    """Factory of director nodes; every node is stopped and the VIPs cleared afterwards."""
    made: list[Node] = []

    def make(name: str, priority: int, **kw) -> Node:
        node = Node(name, tmp_path, priority, **kw)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
    for host in ("a", "b"):
        for cidr in (f"{VIP}/24", f"{VIP6}/64"):
            ip("addr", "del", cidr, "dev", "eth0", ns=NS[host], check=False)
        ip("link", "set", "eth0", "up", ns=NS[host])
    for port in ("pa", "pb"):
        subprocess.run(["ip", "netns", "exec", NS["br"], "bridge", "link", "set", "dev", port, "isolated", "off"],
                       capture_output=True)


def until(cond, timeout: float = 10.0, what: str = "condition", nodes: tuple[Node, ...] = ()) -> float:
    """Poll until ``cond()``; return the seconds it took. On timeout, fail with the directors' logs."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            logs = "\n".join(f"--- {n.name}\n{n.logtext()[-3000:]}" for n in nodes)
            pytest.fail(f"{what} not reached in {timeout} s\n{logs}")
        time.sleep(0.02)
    return time.monotonic() - start


class ArpWatch:
    """A raw AF_PACKET socket in the client's namespace collecting gratuitous ARP for the VIP."""

    def __init__(self) -> None:
        self.sock = netns.socket_in_netns(NS["c"], socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
        self.sock.bind(("eth0", 0x0806))
        self.sock.settimeout(0.05)

    def senders(self, vip: str = VIP) -> list[str]:
        """MACs that announced ``vip`` (sender address = target address) since the last call."""
        out = []
        while True:
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                return out
            arp = frame[14:42]
            if len(arp) < 28:
                continue
            sha, spa, tpa = arp[8:14], socket.inet_ntoa(arp[14:18]), socket.inet_ntoa(arp[24:28])
            if spa == tpa == vip:
                out.append(sha.hex(":"))

    def quiet(self, seconds: float, limit: float = 15.0) -> list[str]:
        """Collect announcements until none came for ``seconds`` (at most ``limit``); what was collected."""
        seen: list[str] = []
        end = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < seconds:
            got = self.senders()
            if got:
                seen += got
                last = time.monotonic()
        return seen

    def close(self) -> None:
        self.sock.close()


def mac(name: str) -> str:
    return ip("-o", "link", "show", "dev", "eth0", ns=NS[name]).split("link/ether ")[1].split()[0]


def pair(nodes, a_priority=200, b_priority=100, **kw) -> tuple[Node, Node]:
    """Start a, then (once a has settled) b; wait until the higher priority is master."""
    a = nodes("a", a_priority, **kw).start()
    until(lambda: a.role() == "master", 15, "a master alone", (a,))
    b = nodes("b", b_priority, **kw).start()
    if b_priority > a_priority:
        until(lambda: b.role() == "master" and a.role() == "backup" and b.has_vip() and not a.has_vip(), 15,
              "b master, a backup", (a, b))
        return a, b
    until(lambda: a.role() == "master" and b.role() == "backup" and a.has_vip() and not b.has_vip(), 15,
          "a master, b backup", (a, b))
    return a, b


def test_election_vip_garp_and_notify_hooks(nodes):
    a, b = pair(nodes, v6=True)
    watch = ArpWatch()
    try:
        # Settle first. On a loaded machine b can time out as master before a's first advert reaches
        # it; a then re-announces the VIP, paced to one per 5 s, and that announcement must not be
        # taken for one caused by the reloads below. b was master at some point iff it made more
        # than its one transition (init -> backup).
        watch.quiet(6.0 if b.state()["transitions"] > 1 else 1.0)
        b.signal(signal.SIGHUP)  # a reload changes nothing: no flap, no announcement from anyone
        until(lambda: a.role("mail6") == "master" and b.role("mail6") == "backup", 10, "IPv6 election", (a, b))
        until(lambda: a.has_vip() and a.has_vip(VIP6) and not b.has_vip(VIP6), 5, "VIPs on a only", (a, b))
        assert not b.has_vip()
        a.signal(signal.SIGHUP)
        time.sleep(0.5)
        assert watch.senders() == [] and a.state()["transitions"] == 2  # reload without changes: no flap
        ip("link", "set", "eth0", "down", ns=NS["a"])  # a moves the VIP to b and back: b announces, then a
        until(lambda: b.role() == "master", 5, "b master", (a, b))
        ip("link", "set", "eth0", "up", ns=NS["a"])
        seen: list[str] = []
        until(lambda: seen.extend(watch.senders()) or mac("a") in seen, 5, "gratuitous ARP from a", (a, b))
        assert mac("b") in seen
        st = a.state()
        assert st["priority"] == 200 and st["master"] == ADDR["a"] and st["transitions"] >= 2
        assert b.state()["master"] == ADDR["a"]
        from lvsmail.console import status as fmt

        text = fmt.failover_text(fmt.read_failover(str(a.dir / "state")))
        assert "mail VRID 51 on eth0: MASTER for" in text and "priority 200, master 192.0.2.1" in text
        assert "holds: vips 192.0.2.33/24" in text
        other = fmt.failover_json(fmt.read_failover(str(b.dir / "state")))
        assert {i["name"]: i["role"] for i in other} == {"mail": "backup", "mail6": "backup"}
        until(lambda: "INSTANCE mail MASTER 200" in (a.notes.read_text() if a.notes.exists() else ""), 5,
              "notify master hook", (a,))
        assert "INSTANCE mail BACKUP 100" in b.notes.read_text()
    finally:
        watch.close()


def test_kill_9_of_the_master_moves_the_vip(nodes):
    a, b = pair(nodes)
    watch = ArpWatch()
    try:
        a.signal(signal.SIGKILL)
        a.wait()
        took = until(lambda: b.has_vip(), 5, "VIP on b", (b,))
        assert took < 1.5  # master down interval at 0.1 s adverts: 0.3 s + skew
        seen: list[str] = []
        until(lambda: seen.extend(watch.senders()) or mac("b") in seen, 5, "gratuitous ARP from b", (b,))
        # the client now reaches the VIP at b (its neighbour entry was overridden by b's announcement)
        assert b.role() == "master"
    finally:
        watch.close()


def test_restart_after_kill_removes_stale_vip_and_rejoins(nodes):
    a, b = pair(nodes, a_priority=100, b_priority=200)
    # b is master here (200): kill it, a takes over; restart b: it clears nothing of a's, preempts back.
    a2 = a
    b.signal(signal.SIGKILL)
    b.wait()
    until(lambda: a2.role() == "master" and a2.has_vip(), 5, "a takes over", (a2,))
    assert b.has_vip()  # a killed director leaves its address behind ...
    b.start()
    until(lambda: b.role() == "master" and not a2.has_vip(), 10, "b back as master", (a2, b))
    assert b.has_vip()


def test_link_down_faults_the_master_and_link_up_preempts_back(nodes):
    a, b = pair(nodes)
    ip("link", "set", "eth0", "down", ns=NS["a"])
    until(lambda: a.role() == "fault" and b.role() == "master", 5, "a fault, b master", (a, b))
    assert "interface eth0 down" in a.state()["faults"]
    until(lambda: b.has_vip() and not a.has_vip(), 5, "VIP moved to b", (a, b))
    until(lambda: "INSTANCE mail FAULT" in a.notes.read_text(), 5, "notify fault", (a,))
    ip("link", "set", "eth0", "up", ns=NS["a"])
    until(lambda: a.role() == "master" and b.role() == "backup", 10, "a preempts back", (a, b))


def test_priority_change_by_reload_hands_over(nodes):
    a, b = pair(nodes)
    a.write(priority=50)
    a.signal(signal.SIGHUP)
    until(lambda: b.role() == "master" and a.role() == "backup", 5, "b master after a's reload", (a, b))
    assert a.state()["priority"] == 50 and a.state()["master"] == ADDR["b"]
    until(lambda: b.has_vip() and not a.has_vip(), 5, "VIP on b", (a, b))


def test_graceful_shutdown_sends_priority_0_and_backup_takes_over_at_once(nodes):
    a, b = pair(nodes)
    t0 = time.monotonic()
    a.signal(signal.SIGTERM)
    took = until(lambda: b.role() == "master" and b.has_vip(), 5, "b master", (a, b))
    assert a.wait() == 0
    assert not a.has_vip()
    # priority 0 -> skew time ((256-100)/256 * 0.1 s = 0.06 s) instead of the 0.36 s master down interval
    assert took < 0.3, f"took {took:.3f} s"
    assert time.monotonic() - t0 < 5


def test_preempt_a_higher_priority_director_joining_takes_over(nodes):
    b = nodes("b", 100).start()
    until(lambda: b.role() == "master", 10, "b alone is master", (b,))
    a = nodes("a", 200).start()
    until(lambda: a.role() == "master" and b.role() == "backup", 10, "a preempts", (a, b))


def test_no_preempt_the_running_master_stays(nodes):
    b = nodes("b", 100, preempt=False).start()
    until(lambda: b.role() == "master", 10, "b alone is master", (b,))
    a = nodes("a", 200, preempt=False).start()
    until(lambda: a.role() == "backup" and a.state()["master"] == ADDR["b"], 10, "a backup of b", (a, b))
    time.sleep(1.0)  # several master-down intervals: a must not take over
    assert a.role() == "backup" and b.role() == "master" and b.has_vip() and not a.has_vip()


def _isolate(on: bool) -> None:
    for port in ("pa", "pb"):
        subprocess.run(["ip", "netns", "exec", NS["br"], "bridge", "link", "set", "dev", port, "isolated",
                        "on" if on else "off"], check=True, capture_output=True)


def test_split_gives_two_masters_and_heal_exactly_one_which_announces_the_vip_again(nodes):
    a, b = pair(nodes)
    watch = ArpWatch()
    try:
        _isolate(True)  # a and b can no longer hear each other (both still reach the client)
        until(lambda: a.role() == "master" and b.role() == "master", 5, "both masters while split", (a, b))
        until(lambda: a.has_vip() and b.has_vip(), 5, "the VIP on both while split", (a, b))
        seen: list[str] = []
        until(lambda: seen.extend(watch.senders()) or mac("b") in seen, 5, "b announced the VIP while split",
              (a, b))
        time.sleep(0.5)  # b's announcements are over: the client now sends the VIP's traffic to b
        watch.senders()
        _isolate(False)
        until(lambda: a.role() == "master" and b.role() == "backup", 5, "one master after heal", (a, b))
        until(lambda: not b.has_vip(), 5, "b dropped the VIP", (a, b))
        assert a.has_vip()
        # b stood down without a word; a, hearing the other master, announces again so the client's
        # ARP entry for the VIP leaves b (a lower-priority advert, as keepalived's garp_lower_prio_repeat).
        seen.clear()
        until(lambda: seen.extend(watch.senders()) or mac("a") in seen, 5, "a announced the VIP after the heal",
              (a, b))
        assert mac("b") not in seen
    finally:
        watch.close()


def test_unicast_peers_elect_and_fail_over(nodes):
    a = nodes("a", 200, options=f"      unicast_peers: [{ADDR['b']}]\n").start()
    until(lambda: a.role() == "master" and a.has_vip(), 15, "a master", (a,))
    b = nodes("b", 100, options=f"      unicast_peers: [{ADDR['a']}]\n").start()
    until(lambda: b.role() == "backup" and b.state()["master"] == ADDR["a"], 15, "b backup of a (unicast)", (a, b))
    a.signal(signal.SIGKILL)
    a.wait()
    until(lambda: b.role() == "master" and b.has_vip(), 5, "b master", (b,))


def _key(path: Path, secret: str) -> str:
    path.write_text(secret)
    path.chmod(0o600)
    return f"      auth_key_file: {path}\n"


def test_authenticated_adverts_between_lvsmail_and_a_wrong_key_is_not_heard(nodes, tmp_path):
    a = nodes("a", 200, options=_key(tmp_path / "a.key", "a-shared-secret-of-enough-length")).start()
    until(lambda: a.role() == "master" and a.has_vip(), 15, "a master", (a,))
    b = nodes("b", 100, options=_key(tmp_path / "b.key", "a-shared-secret-of-enough-length")).start()
    until(lambda: b.role() == "backup" and b.state()["master"] == ADDR["a"], 15, "b backup of a", (a, b))
    b.stop()
    c = nodes("b", 100, options=_key(tmp_path / "c.key", "another-secret-of-enough-length")).start()
    until(lambda: c.role() == "master", 10, "a director with the wrong key hears nobody", (a, c))
    assert "authentication tag does not match" in a.logtext() + c.logtext()
