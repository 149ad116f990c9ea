"""The OCF resource agent running a real director on real IPVS, operation by operation as Pacemaker would.

One director in a namespace of its own: start (ready only once the table is
programmed), monitor at depth 0 and 10, a reload after a weight change (one edit
in the kernel), and a stop that leaves the table in place. The whole of
``ocf-tester`` takes longer than a kernel test may under emulation (about 75 s:
two director starts); docs/ocf.md gives the command that runs it in the lab.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from lvsmail.lab.cluster import parse_proc_ip_vs
from ocf_harness import OCF_NOT_RUNNING, OCF_SUCCESS, Resource, cluster_yaml, missing_tools, write_wrapper

# Runs after the per-method clusters are closed (with the whole-cluster tests): under emulation
# a director competing with a running lab cluster for the VM's CPUs would only be slower.
pytestmark = [pytest.mark.whole_cluster,
              pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")]

SERVICE = "TCP 192.0.2.33:25"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns(alone_in_the_lab):
    """A namespace with the real servers' network on a dummy link (IPVS refuses a real server it has
    no route to; a dummy interface sends nothing anywhere)."""
    name = f"lvsocf{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "add", "d0", "type", "dummy")
        _ip("-n", name, "addr", "add", "198.51.100.1/24", "dev", "d0")
        _ip("-n", name, "link", "set", "d0", "up")
        yield name
    finally:
        _ip("netns", "del", name)


def _table(ns: str) -> dict:
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/ip_vs"], check=True,
                          capture_output=True, text=True).stdout
    return parse_proc_ip_vs(text)


def _weights(ns: str) -> dict[str, int]:
    svc = _table(ns).get(SERVICE)
    return {d.address: d.weight for d in svc.dests} if svc else {}


def test_agent_starts_monitors_reloads_and_stops_a_director(netns, lab_out):
    work = lab_out / f"ocf-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "cluster.yaml"
    config.write_text(cluster_yaml(weight=1))
    resource = Resource("lvsmail-lab", {
        "config": str(config), "binary": str(write_wrapper(work / "lvsmail")),
        "state_dir": str(work / "state"), "logfile": str(work / "director.log"),
        "pidfile": str(work / "director.pid"),
        "options": "--repair-interval 1",
    }, prefix=("ip", "netns", "exec", netns))
    timings = {}

    def op(action: str, expect: int, **env) -> None:
        t0 = time.monotonic()
        result = resource.run(action, timeout=300, timeout_ms=300000, **env)
        timings[f"{action}{' depth ' + env['OCF_CHECK_LEVEL'] if 'OCF_CHECK_LEVEL' in env else ''}"] = \
            time.monotonic() - t0
        assert result.returncode == expect, f"{action}: exit {result.returncode}\n{result.stderr}"

    stopped = False
    try:
        op("start", OCF_SUCCESS)
        # Ready means programmed: the table is complete when start returns, with no wait here.
        assert _weights(netns) == {"198.51.100.20": 1, "198.51.100.32": 1}
        op("monitor", OCF_SUCCESS)
        op("monitor", OCF_SUCCESS, OCF_CHECK_LEVEL="10")  # the director's local API answers

        config.write_text(cluster_yaml(weight=3))
        op("reload", OCF_SUCCESS)
        # The reload returns once the director reports the new file in force: no wait here either.
        assert _weights(netns) == {"198.51.100.20": 3, "198.51.100.32": 1}
        log = (work / "director.log").read_text()
        # One edit in place (netlink "set"), never delete-and-add: connections to the server survive.
        assert log.count(f"edit dest {SERVICE} -> 198.51.100.20:25 tun weight 3") == 1, log
        assert "delete dest" not in log, log

        op("stop", OCF_SUCCESS)
        stopped = True
        op("monitor", OCF_NOT_RUNNING)
        assert not (work / "director.pid").exists()
        # flush_on_stop is false: the table stays for the next director (a restart does not cut mail).
        assert _weights(netns) == {"198.51.100.20": 3, "198.51.100.32": 1}
    finally:
        if not stopped:  # a failed step leaves no director behind for the next tests
            resource.run("stop", timeout=120)
        print("ocf agent operations (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
