"""The dashboard as a person uses it: in an 80x24 tmux pane, against a running director process.

The director is its own process with the in-memory kernel (this host has no
IPVS) made busy: every dump adds connections to the real servers that have
weight, so rates, sparklines and active counts move. The real servers are
aiosmtpd on loopback addresses of this test's own (127.77.0.0/24, a port
derived from the pid), checked by the director's real SMTP check. The test
only sends keys and reads the screen (tmux send-keys / capture-pane).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("aiosmtpd")
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (deploy/setup installs it)")

REPO = Path(__file__).resolve().parents[2]
PORT = 20000 + os.getpid() % 20000
MX1, MX2 = "127.77.0.2", "127.77.0.3"

CLUSTER = f"""\
cluster: dash
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    persistent: 300
    forwarding: nat
    realservers: [{{address: {MX1}, port: {PORT}, name: mx1, weight: 3}}, {{address: {MX2}, port: {PORT}}}]
    check: {{type: smtp, interval: 0.5, timeout: 1, rise: 1, fall: 1}}
"""

DIRECTOR = """\
import asyncio, logging, random, sys
from dataclasses import replace
from lvsmail.director.daemon import Director, serve
from lvsmail.ipvs.fake import FakeIPVS

class BusyFakeIPVS(FakeIPVS):
    # Each dump adds connections to real servers with weight; drained ones lose their active sessions.
    async def dump(self, counters=False):
        for entry in self.table.values():
            for d in entry.dests.values():
                if d.settings.weight > 0:
                    n = random.randint(1, 5)
                    d.counters = replace(d.counters, conns=d.counters.conns + n,
                                         inbytes=d.counters.inbytes + 900 * n, outbytes=d.counters.outbytes + 300 * n)
                    d.active, d.inactive = random.randint(1, 9), random.randint(0, 20)
                else:
                    d.active = max(0, d.active - 3)
            entry.counters = replace(entry.counters, conns=sum(d.counters.conns for d in entry.dests.values()))
        return await super().dump(counters)

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
asyncio.run(serve(Director(sys.argv[1], BusyFakeIPVS(), state_dir=sys.argv[2], repair_interval=1)))
"""


class Sink:
    """An aiosmtpd server that accepts everything (a real server's MTA, as the check sees it)."""

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def smtp(address: str):
    from aiosmtpd.controller import Controller

    c = Controller(Sink(), hostname=address, port=PORT)
    c.start()
    return c


@pytest.fixture
def director(tmp_path):
    try:
        servers = {MX1: smtp(MX1), MX2: smtp(MX2)}
    except OSError as exc:
        pytest.skip(f"cannot listen on loopback {MX1}/{MX2}:{PORT}: {exc}")
    (tmp_path / "dash.yaml").write_text(CLUSTER)
    (tmp_path / "director.py").write_text(DIRECTOR)
    log = open(tmp_path / "director.log", "wb")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "director.py"), str(tmp_path / "dash.yaml"),
                             str(tmp_path / "state")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=log, stderr=log)
    sock = tmp_path / "state" / "dash.sock"
    try:
        end = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"director did not start:\n{(tmp_path / 'director.log').read_text()}")
            time.sleep(0.1)
        yield sock, servers
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        for c in servers.values():
            if c is not None:
                c.stop()


class Pane:
    """A private tmux server with one 80x24 window running the dashboard."""

    def __init__(self, sock: Path) -> None:
        self.name = f"lvsdash-{os.getpid()}"
        cmd = f"PYTHONPATH={REPO} {sys.executable} -m lvsmail dashboard --socket {sock}"
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", cmd)

    def tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def wait(self, cond, what: str, timeout: float = 15.0) -> str:
        """Poll the screen (bounded) until ``cond(screen)``; fail showing the last screen."""
        end = time.monotonic() + timeout
        while True:
            text = self.screen()
            if cond(text):
                return text
            if time.monotonic() > end:
                pytest.fail(f"screen never showed {what}:\n{text}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.name, "has-session"], capture_output=True, timeout=10).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=10)


def row(screen: str, address: str) -> str:
    """The line of the real server at ``address`` (without the selection marker)."""
    lines = [line.replace("▶", " ") for line in screen.splitlines() if f"{address}:{PORT}" in line and "->" not in line
             and ("up" in line or "down" in line or "draining" in line or "quiescent" in line)]
    return lines[0] if lines else ""


def test_dashboard_shows_a_stopped_server_down_then_up_and_drains_with_keys(director):
    sock, servers = director
    pane = Pane(sock)
    try:
        screen = pane.wait(lambda s: row(s, MX1).split()[:1] == ["up"] and row(s, MX2).split()[:1] == ["up"],
                           "both real servers up")
        assert " dash | no VRRP" in screen and "TCP 192.0.2.33:25 wlc persist 300" in screen
        assert all(len(line) <= 80 for line in screen.splitlines()) and len(screen.splitlines()) <= 24

        # The second real server's MTA stops: the check fails, the badge says down with the reason.
        servers[MX2].stop()
        servers[MX2] = None
        screen = pane.wait(lambda s: row(s, MX2).split()[:1] == ["down"], f"{MX2} down")
        assert f"smtp {MX2}:{PORT}: connect: connection refused" in screen
        assert "1/-" in row(screen, MX2)  # configured weight 1, out of the kernel
        assert "health" in screen and "kernel   delete dest" in screen  # the events footer

        # It comes back.
        servers[MX2] = smtp(MX2)
        pane.wait(lambda s: row(s, MX2).split()[:1] == ["up"], f"{MX2} up again")

        # Drain mx1 (the selected first row) with d, confirmed with y.
        pane.keys("d")
        screen = pane.wait(lambda s: f"Drain smtp {MX1}:{PORT} (mx1)? [y/n]" in s, "the drain question")
        pane.keys("y")
        screen = pane.wait(lambda s: "draining" in row(s, MX1) and " 3/0 " in row(s, MX1),
                           "mx1 draining at weight 0")
        assert f"operator smtp {MX1}:{PORT} drained" in screen

        # Enable it again, but answer no first: nothing changes.
        pane.keys("e", "n")
        pane.wait(lambda s: "cancelled" in s, "the cancelled question")
        assert "draining" in row(pane.screen(), MX1)
        pane.keys("e", "y")
        pane.wait(lambda s: row(s, MX1).split()[:1] == ["up"] and " 3/3 " in row(s, MX1), "mx1 enabled")

        pane.keys("q")
        end = time.monotonic() + 10
        while pane.alive() and time.monotonic() < end:
            time.sleep(0.1)
        assert not pane.alive(), "q did not end the dashboard"
    finally:
        pane.close()
