"""The dashboard and the drain command against the director in the lab (real IPVS, real SMTP checks).

Reuses test_health's lab: the TUN cluster with its ``health`` service (SMTP
check every second, weights 1/3/1/1) loaded by SIGHUP. The dashboard runs in
an 80x24 tmux pane, filtered to that service, talking to the running
``lvsmail director start`` over its UNIX socket (a file: no namespace needed).
The test sends keys and reads the screen, and checks each step in the kernel's
own table (/proc/net/ip_vs in the director's namespace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_health import HEALTH_PORT, _restore, _weights
from test_health import lab as health_lab  # noqa: F401  (a fixture: pytest finds it by name)

from lvsmail.console.client import find_socket

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (deploy/setup)")]

REPO = Path(__file__).resolve().parents[2]
#: Emulation is slow: generous deadlines for what the screen must show.
DEADLINE = 60.0


class Pane:
    """A private tmux server with one 80x24 window running the dashboard."""

    def __init__(self, sock: Path) -> None:
        self.name = f"lvsdash-lab-{os.getpid()}"
        # If the dashboard dies, the pane keeps its last words for the failure message.
        cmd = (f"PYTHONPATH={REPO} {sys.executable} -m lvsmail dashboard --socket {sock} --service health;"
               " echo dashboard exited with $?; sleep 600")
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", cmd)

    def tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def wait(self, cond, what: str, deadline: float = DEADLINE) -> str:
        end = time.monotonic() + deadline
        while True:
            text = self.screen()
            if cond(text):
                return text
            if time.monotonic() > end:
                pytest.fail(f"screen never showed {what}:\n{text}")
            time.sleep(0.5)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=30)


def badge(screen: str, address: str) -> str:
    """The health word on the row of the real server at ``address`` ("" if not shown)."""
    for line in screen.splitlines():
        if f"{address}:{HEALTH_PORT}" in line and "└" not in line:
            return line.replace("▶", " ").split()[0]
    return ""


@pytest.fixture(scope="module")
def lab(health_lab):
    """test_health's lab: the TUN cluster with its health services loaded."""
    return health_lab


def test_dashboard_in_the_lab_shows_down_up_and_drains_with_keys(lab):
    key, victim = lab.key(HEALTH_PORT), "rs2"
    addr, weight = lab.address(victim), lab.services["health"].weights[victim]
    sock = find_socket(lab.state_dir())  # on tmpfs: the lab's state directory is a 9p share
    assert sock is not None, f"no API socket named in {lab.state_dir()}"
    pane = Pane(sock)
    try:
        # The first frame waits for an interpreter and rich to load under emulation.
        screen = pane.wait(lambda s: badge(s, addr) == "up", f"{victim} up", deadline=4 * DEADLINE)
        assert f"health TCP {lab.topo.vip}:{HEALTH_PORT}" in screen
        assert all(len(line) <= 80 for line in screen.splitlines())

        lab.sinks.stop_listening(victim, [HEALTH_PORT])
        screen = pane.wait(lambda s: badge(s, addr) == "down" and "refused" in s, f"{victim} down with the reason")
        assert lab.table()[key].dest(addr) is None

        lab.sinks.start_listening(victim, [HEALTH_PORT])
        pane.wait(lambda s: badge(s, addr) == "up", f"{victim} up again")

        servers = [f"{lab.address(r)}:{HEALTH_PORT}" for r in lab.services["health"].weights]
        rows = [line for line in screen.splitlines()  # real servers' rows only: not the service, not reasons
                if any(hp in line for hp in servers) and "└" not in line and " TCP " not in line]
        index = next(i for i, line in enumerate(rows) if f"{addr}:{HEALTH_PORT}" in line)
        pane.keys(*(["Down"] * index), "d")
        pane.wait(lambda s: f"Drain health {addr}:{HEALTH_PORT} ({victim})? [y/n]" in s, "the drain question")
        pane.keys("y")
        pane.wait(lambda s: badge(s, addr) == "draining" and f"{weight}/0" in s, f"{victim} draining at weight 0")
        assert _weights(lab.table(), key)[addr] == 0  # the kernel's own table

        pane.keys("e")
        pane.wait(lambda s: "[y/n]" in s, "the enable question")
        pane.keys("y")
        pane.wait(lambda s: badge(s, addr) == "up", f"{victim} enabled")
        assert _weights(lab.table(), key)[addr] == weight
    finally:
        pane.close()
        _restore(lab, HEALTH_PORT)
        subprocess.run([sys.executable, "-m", "lvsmail", "realserver", "enable", addr, "--socket", str(sock)],
                       cwd=REPO, capture_output=True, timeout=120)


def test_drain_wait_returns_when_the_kernel_has_no_active_connection(lab):
    from click.testing import CliRunner

    from lvsmail.commands.realserver_ops import drain, enable

    key, addr = lab.key(HEALTH_PORT), lab.address("rs1")
    sock = str(find_socket(lab.state_dir()))
    try:
        res = CliRunner().invoke(drain, [addr, "--service", "health", "--wait", "--timeout", "60", "--socket", sock])
        assert res.exit_code == 0, res.output
        assert "no active connections left" in res.output
        assert _weights(lab.table(), key)[addr] == 0
    finally:
        res = CliRunner().invoke(enable, [addr, "--socket", sock])
    assert res.exit_code == 0, res.output
    assert _weights(lab.table(), key)[addr] == lab.services["health"].weights["rs1"]


METRICS_LISTEN = "127.0.0.1:9712"
AVAILABILITY = f"""
availability:
  node_availability: 0.999118607
  mtbf_hours: 8640
  layers:
    directors: {{nodes: 2, mode: active-passive, mtfo_seconds: 4.351}}
    realservers: {{nodes: 4, mode: all-active}}
    storage: {{nodes: 6, mode: active-passive, mtfo_seconds: 137.162}}
metrics:
  listen: "{METRICS_LISTEN}"
"""


def test_metrics_scrape_and_availability_report_from_the_lab_director(lab):
    """Prometheus sees the kernel's weights and a real server's removal; the report uses the measured removal."""
    import json

    from prometheus_client.parser import text_string_to_metric_families

    director, key, victim = lab.cluster.director, lab.key(HEALTH_PORT), "rs3"
    addr = lab.address(victim)
    config = director.config
    before = config.read_text()
    try:
        director.write_config(before + AVAILABILITY)
        director.reload()
        scrape = [sys.executable, "-c", "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen("
                  f"'http://{METRICS_LISTEN}/metrics', timeout=60).read().decode())"]
        end = time.monotonic() + 4 * DEADLINE
        while lab.topo.run(lab.topo.director, scrape, check=False, timeout=120).returncode != 0:
            assert time.monotonic() < end, "the metrics endpoint never answered after the reload"
            time.sleep(1)

        lab.sinks.stop_listening(victim, [HEALTH_PORT])
        director.wait_for(lambda t: key in t and t[key].dest(addr) is None, timeout=DEADLINE,
                          what=f"{victim} removed after its SMTP server stopped")
        lab.sinks.start_listening(victim, [HEALTH_PORT])
        director.wait_for(lambda t: key in t and t[key].dest(addr) is not None, timeout=DEADLINE,
                          what=f"{victim} back after its SMTP server restarted")
        # The scrape must say what the kernel holds. Health checks keep running meanwhile, and on a loaded
        # machine a server can flap between reading the kernel and scraping: compare a scrape only with a
        # kernel table that was the same just before and just after it (a few tries, bounded).
        for _ in range(5):
            kernel = _weights(lab.table(), key)
            samples = {}
            for family in text_string_to_metric_families(lab.topo.run(lab.topo.director, scrape, timeout=120).stdout):
                for s in family.samples:
                    samples.setdefault(s.name, []).append(s)
            if _weights(lab.table(), key) == kernel:
                break
        else:
            pytest.fail("the kernel's table changed during each of 5 scrapes")
        weights = {s.labels["remote_address"]: s.value for s in samples["node_ipvs_backend_weight"]
                   if s.labels["local_port"] == str(HEALTH_PORT)}
        assert weights == {a: float(w) for a, w in kernel.items()}  # the scrape says what the kernel holds
        up = {s.labels["address"]: s.value for s in samples["lvsmail_realserver_up"]
              if s.labels["service"] == "health"}
        assert up[addr] == 1.0
        removals = [s.value for s in samples["lvsmail_failover_duration_seconds_count"]
                    if s.labels["kind"] == "realserver_removal"]
        assert removals and removals[0] >= 1

        report = subprocess.run([sys.executable, "-m", "lvsmail", "availability", "-c", str(config),
                                 "--state-dir", str(lab.state_dir()), "--json"],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert report.returncode == 0, report.stdout + report.stderr
        print(f"availability from the lab director's records: {report.stdout}")
        data = json.loads(report.stdout)
        ours = {layer["name"]: layer for layer in data["ours"]["layers"]}
        assert ours["realservers"]["mtfo_source"].startswith("recorded median of ")
        assert 0 < ours["realservers"]["mtfo_seconds"] < DEADLINE  # the removal the director measured
        assert "seed" in data  # printed beside the seed's own figures
    finally:
        lab.sinks.start_listening(victim, [HEALTH_PORT])
        director.write_config(before)
        director.reload()
