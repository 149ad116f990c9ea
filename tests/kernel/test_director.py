"""The director against the real kernel's IPVS table (lab): seed table, drift, reload, exit.

Each test gets a private network namespace, so its IPVS table starts empty and
nothing else on the machine is touched. The director runs as the real command
(``lvsmail director start``) under ``ip netns exec``; the table is read back both
through lvsmail's netlink backend and through ``ipvsadm -Ln``, an independent tool.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lvsmail.ipvs.netlink import NetlinkIPVS
from lvsmail.net.netns import create_netns, remove_netns, run_in_netns

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
SEED_FILE = REPO / "directors" / "examples" / "clustermail.yaml"
REPAIR = 1.0  # seconds; short so the drift test is quick


def seed_text() -> str:
    """The seed example without its check blocks.

    These tests are about programming the table; the namespace has no real
    servers, so with the checks on, the director would (rightly) remove them.
    Health is tested in test_health.py and test_via_vip.py.
    """
    text = re.sub(r"\n    check:\n(?:      .*\n|\s*#.*\n)*", "\n", SEED_FILE.read_text())
    assert "check:" not in text.split("# - name: smtp6")[0]
    return text


@pytest.fixture
def seed(tmp_path) -> Path:
    """A copy of the seed example without checks."""
    path = tmp_path / "clustermail.yaml"
    path.write_text(seed_text())
    return path


@pytest.fixture
def netns(lab_ok):
    """A fresh namespace with lo up (without it IPVS refuses real servers: no local table)."""
    name = f"lvsdir-{uuid.uuid4().hex[:6]}"
    create_netns(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    remove_netns(name)


def lvsmail(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """Run an lvsmail command inside the namespace."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "lvsmail", *args],
                          capture_output=True, text=True, timeout=120, **kw)


def ipvsadm(ns: str, *args: str) -> str:
    """The reference tool's view of the namespace's table."""
    return subprocess.run(["ip", "netns", "exec", ns, "ipvsadm", *args], capture_output=True, text=True,
                          check=True).stdout


def table(ns: str):
    """The namespace's table through lvsmail's own backend (socket opened inside the namespace)."""
    backend = NetlinkIPVS()
    run_in_netns(ns, backend.open)
    try:
        return backend.dump_sync()
    finally:
        backend.close_sync()


def wait_for(cond, timeout: float, what: str):
    """Poll the kernel until ``cond()`` is true; fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def start_director(ns: str, config: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    """``lvsmail director start`` in the namespace; returns once its table is in the kernel."""
    log = open(tmp_path / "director.log", "w")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "lvsmail", "director", "start", "-c", str(config),
         "--repair-interval", str(REPAIR), "--state-dir", str(tmp_path / "state"), *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_for(lambda: (tmp_path / "director.log").read_text().count(" in sync: ") or proc.poll() is not None,
             120, "the director to report its table in sync")
    assert proc.poll() is None, (tmp_path / "director.log").read_text()
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def seed_shaped(t) -> bool:
    """True when the table is the seed's: 2 services, wlc, persistent 120, 4 x Tunnel weight 1."""
    if len(t) != 2:
        return False
    for svc in t.values():
        s = svc.settings
        if (s.scheduler, s.persistent, s.timeout, s.netmask) != ("wlc", True, 120, 0xFFFFFFFF):
            return False
        if sorted(d.addr for d in svc.dests) != ["198.51.100.20", "198.51.100.32", "198.51.100.35", "198.51.100.36"]:
            return False
        if any((d.settings.forwarding, d.settings.weight) != ("tun", 1) for d in svc.dests.values()):
            return False
    return {(k.addr, k.port) for k in t} == {("192.0.2.33", 25), ("192.0.2.33", 80)}


def test_seed_file_gives_the_seed_table_and_survives_drift_reload_and_restart(netns, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(seed_text())
    proc = start_director(netns, config, tmp_path)
    try:
        assert seed_shaped(table(netns))
        # The reference tool sees the same thing the seed's `ipvsadm -Ln` screen showed.
        text = ipvsadm(netns, "-Ln")
        assert "TCP  192.0.2.33:25 wlc persistent 120" in text
        assert "TCP  192.0.2.33:80 wlc persistent 120" in text
        assert text.count("Tunnel  1") == 8

        # Drift: someone clears the table; it is back within one repair period (plus process slack).
        ipvsadm(netns, "-C")
        assert table(netns) == {}
        t0 = time.monotonic()
        wait_for(lambda: seed_shaped(table(netns)), REPAIR + 15, "drift repair after ipvsadm -C")
        repaired_in = time.monotonic() - t0

        # Reload with a broken file: rejected, table untouched, director alive.
        config.write_text(seed_text().replace("scheduler: wlc", "scheduler: wlcc", 1))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in (tmp_path / "director.log").read_text(), 60, "the rejection")
        assert "wlcc" in (tmp_path / "director.log").read_text()
        assert seed_shaped(table(netns)) and proc.poll() is None

        # Reload with a changed file: one weight edited in place (the real server is not re-added).
        config.write_text(seed_text().replace("        weight: 1 ", "        weight: 5 ", 1))
        proc.send_signal(signal.SIGHUP)

        def weight_is_5():
            t = table(netns)
            return [d.settings.weight for k, s in t.items() if k.port == 25
                    for dk, d in s.dests.items() if dk.addr == "198.51.100.36"] == [5]

        wait_for(weight_is_5, 60, "the reloaded weight")
        assert "edit dest TCP 192.0.2.33:25 -> 198.51.100.36:25 tun weight 5" in (tmp_path / "director.log").read_text()
    finally:
        stop(proc)
    # SIGTERM leaves the table in place (hitless restart).
    assert len(table(netns)) == 2
    print(f"drift repaired {repaired_in:.1f}s after ipvsadm -C (repair interval {REPAIR}s)")


def test_flush_on_exit_removes_only_this_files_services(netns, tmp_path):
    ipvsadm(netns, "-A", "-t", "203.0.113.9:53", "-s", "rr")  # somebody else's service
    config = tmp_path / "cluster.yaml"
    config.write_text(seed_text())
    proc = start_director(netns, config, tmp_path, "--flush-on-exit")
    assert len(table(netns)) == 3
    stop(proc)
    remaining = table(netns)
    assert [(k.addr, k.port) for k in remaining] == [("203.0.113.9", 53)]


def test_apply_dry_run_shows_the_plan_and_changes_nothing(netns, seed):
    dry = lvsmail(netns, "director", "apply", "-c", str(seed), "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert "would add service TCP 192.0.2.33:25 wlc persistent 120" in dry.stdout
    assert table(netns) == {}
    done = lvsmail(netns, "director", "apply", "-c", str(seed))
    assert done.returncode == 0, done.stderr
    assert seed_shaped(table(netns))
    again = lvsmail(netns, "director", "apply", "-c", str(seed), "--dry-run")
    assert (again.returncode, again.stdout.strip()) == (0, "in sync: nothing to do")


def test_bad_file_is_refused_before_the_kernel_is_touched(netns, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(seed_text().replace("port: 25", "port: 250000", 1))
    res = lvsmail(netns, "director", "start", "-c", str(bad), "--state-dir", str(tmp_path))
    assert res.returncode == 2
    assert "bad.yaml:" in res.stderr and "port" in res.stderr
    assert table(netns) == {}


def test_status_json_reports_what_the_kernel_holds(netns, seed):
    assert lvsmail(netns, "director", "apply", "-c", str(seed)).returncode == 0
    res = lvsmail(netns, "director", "status", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    smtp = next(s for s in data["services"] if s["port"] == 25)
    assert (smtp["scheduler"], smtp["persistent"], smtp["netmask"]) == ("wlc", 120, "255.255.255.255")
    assert [(r["address"], r["forwarding"], r["weight"]) for r in smtp["realservers"]] == [
        (a, "tun", 1) for a in ("198.51.100.20", "198.51.100.32", "198.51.100.35", "198.51.100.36")]
    assert set(data["timeouts"]) == {"tcp", "tcpfin", "udp"}
    text = lvsmail(netns, "director", "status").stdout
    assert "TCP 192.0.2.33:25 wlc persistent 120" in text and text.count("Tunnel") == 8
