"""Interoperability: one lvsmail director and one keepalived (Debian's, ``vrrp_version 3``) in one virtual router.

Same segment as the pair tests (namespaces prefixed ``vr-``): lvsmail runs in ``a``,
keepalived in ``b``. Each takes over from the other and they agree on who is master:
the master holds the VIP, the other knows it as backup (lvsmail's state file,
keepalived's notify script).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_vrrp_pair import ADDR, NS, VIP, ip, nodes, segment, until  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived is not installed"),
]

KEEPALIVED_CONF = """\
global_defs {{
    router_id lvsmail-interop-{name}
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance mail {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {interval}
    {preempt}
    virtual_ipaddress {{
        {vip}/24
    }}
    notify {notify}
}}
"""


class Keepalived:
    """keepalived (VRRP only, foreground) in a namespace, its role reported by a notify script."""

    def __init__(self, name: str, tmp: Path, priority: int, interval: float = 0.1, preempt: bool = True) -> None:
        self.name, self.ns = name, NS[name]
        self.dir = tmp / f"keepalived-{name}"
        self.dir.mkdir(exist_ok=True)
        self.roles = self.dir / "roles"
        notify = self.dir / "notify.sh"
        notify.write_text(f"#!/bin/sh\necho \"$3 $4\" >> {self.roles}\n")
        notify.chmod(0o700)
        self.conf = self.dir / "keepalived.conf"
        self.conf.write_text(KEEPALIVED_CONF.format(name=name, priority=priority, interval=interval, vip=VIP,
                                                    preempt="" if preempt else "nopreempt", notify=notify))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Keepalived:
        self.log = open(self.dir / "keepalived.log", "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
             "-f", str(self.conf), "-p", str(self.dir / "k.pid"), "-r", str(self.dir / "v.pid")],
            stdout=self.log, stderr=self.log)
        return self

    def role(self) -> str | None:
        """keepalived's last notified state (MASTER, BACKUP, FAULT)."""
        try:
            lines = self.roles.read_text().split()
        except FileNotFoundError:
            return None
        return lines[-2] if len(lines) >= 2 else None

    def has_vip(self) -> bool:
        return f" {VIP}/" in ip("-o", "addr", "show", "dev", "eth0", ns=self.ns)

    def logtext(self) -> str:
        return (self.dir / "keepalived.log").read_text(errors="replace")

    def kill(self, sig: int) -> None:
        # keepalived forks a VRRP child: signal the whole group started by `ip netns exec`
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            for pidfile in ("v.pid", "k.pid"):
                try:
                    os.kill(int((self.dir / pidfile).read_text().split()[0]), signal.SIGKILL)
                except (OSError, ValueError):
                    pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log.close()


def steady(cond, seconds: float, what: str, nodes) -> None:
    """``cond()`` must hold at every poll for ``seconds`` (several master-down intervals at 0.1 s adverts)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not cond():
            logs = "\n".join(f"--- {n.name}\n{n.logtext()[-3000:]}" for n in nodes)
            pytest.fail(f"{what}: no longer true\n{logs}")
        time.sleep(0.02)


@pytest.fixture
def keepalived(segment, tmp_path):
    made: list[Keepalived] = []

    def make(name: str, priority: int, **kw) -> Keepalived:
        k = Keepalived(name, tmp_path, priority, **kw)
        made.append(k)
        return k

    yield make
    for k in made:
        k.stop()


def test_lvsmail_master_keepalived_backup_then_keepalived_takes_over_and_lvsmail_preempts(nodes, keepalived):
    a = nodes("a", 200).start()
    until(lambda: a.role() == "master" and a.has_vip(), 15, "lvsmail master", (a,))
    k = keepalived("b", 100).start()
    # keepalived may time out once at start-up (its first timer can run from a time taken before its slow
    # start) and be master for an instant; it must then hear lvsmail and settle as backup.
    until(lambda: k.role() == "BACKUP" and not k.has_vip(), 15, "keepalived backup", (a, k))
    steady(lambda: k.role() == "BACKUP" and not k.has_vip() and a.role() == "master" and a.has_vip(), 1.0,
           "both agree: lvsmail master, keepalived backup", (a, k))
    assert a.state()["transitions"] == 2  # lvsmail never left master
    # lvsmail crashes: keepalived takes over
    a.signal(signal.SIGKILL)
    a.wait()
    until(lambda: k.role() == "MASTER" and k.has_vip(), 5, "keepalived master", (k,))
    # lvsmail comes back with the higher priority: keepalived accepts it and steps down
    ip("addr", "del", f"{VIP}/24", "dev", "eth0", ns=NS["a"], check=False)
    a.start()
    until(lambda: a.role() == "master" and k.role() == "BACKUP", 10, "lvsmail preempts keepalived", (a, k))
    until(lambda: a.has_vip() and not k.has_vip(), 5, "VIP back on lvsmail", (a, k))
    assert a.state()["master"] == ADDR["a"]


def test_keepalived_master_lvsmail_backup_then_graceful_handover(nodes, keepalived):
    k = keepalived("b", 250).start()
    until(lambda: k.role() == "MASTER" and k.has_vip(), 15, "keepalived master", (k,))
    a = nodes("a", 100).start()
    until(lambda: a.role() == "backup" and a.state()["master"] == ADDR["b"], 15, "lvsmail backup of keepalived",
          (a, k))
    steady(lambda: k.role() == "MASTER" and k.has_vip() and a.role() == "backup" and not a.has_vip(), 1.0,
           "both agree: keepalived master, lvsmail backup", (a, k))
    # keepalived stops gracefully (priority 0): lvsmail takes over
    k.stop()
    until(lambda: a.role() == "master" and a.has_vip(), 5, "lvsmail master", (a, k))
    # and keepalived, back with a higher priority, takes over from lvsmail
    k2 = keepalived("b", 250).start()
    until(lambda: k2.role() == "MASTER" and a.role() == "backup", 15, "keepalived preempts lvsmail", (a, k2))
    until(lambda: k2.has_vip() and not a.has_vip(), 5, "VIP on keepalived", (a, k2))
