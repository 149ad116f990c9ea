"""The OCF resource agent on a machine without IPVS: meta-data, validation, monitor, stop, reload.

What needs no kernel table runs here against the real agent, Debian's OCF shell
library and the real ``lvsmail config validate``. Where a running director is
needed to exercise the agent's process handling (stop, SIGKILL after the stop
timeout, a refused reload), a stand-in process carries the command line the agent
recognises as its director. The real director under the agent, with IPVS, is
tests/kernel/test_ocf_agent.py; the whole of ``ocf-tester`` is in docs/ocf.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ocf_harness import (
    AGENT,
    OCF_ERR_CONFIGURED,
    OCF_ERR_GENERIC,
    OCF_ERR_INSTALLED,
    OCF_ERR_UNIMPLEMENTED,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    Resource,
    cluster_yaml,
    exit_reason,
    missing_tools,
    write_wrapper,
)

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")

GOOD = cluster_yaml()

#: A stand-in for a running director: the command line is what the agent looks for; SIGHUP is
#: written down (the agent's reload), SIGTERM ends it unless told to ignore it together with a
#: child in its process group (a check worker that does not stop).
STAND_IN = """\
import os, signal, sys, time
marks = sys.argv[1]
signal.signal(signal.SIGHUP, lambda *_: open(marks, "a").write("HUP\\n"))
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
open(marks, "a").write("ready\\n")
time.sleep(600)
"""


@pytest.fixture
def resource(tmp_path) -> Resource:
    """A resource with a valid cluster file and all its files in a temporary directory."""
    (tmp_path / "cluster.yaml").write_text(GOOD)
    return Resource("lvsmail-test", {
        "config": str(tmp_path / "cluster.yaml"),
        "binary": str(write_wrapper(tmp_path / "lvsmail")),
        "state_dir": str(tmp_path / "state"),
        "logfile": str(tmp_path / "director.log"),
        "pidfile": str(tmp_path / "director.pid"),
    })


@pytest.fixture
def stand_in(resource, tmp_path):
    """Start a stand-in director recorded in the resource's pid file; yields (process, marks file)."""
    procs = []

    def start(ignore_term: bool = False) -> tuple[subprocess.Popen, Path]:
        marks = tmp_path / "marks"
        env = dict(os.environ, IGNORE_TERM="1" if ignore_term else "")
        p = resource.params
        proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(marks), "director", "start", "-c", p["config"],
                                 "--state-dir", p["state_dir"]], env=env, start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not (marks.exists() and "ready" in marks.read_text()):
            assert time.monotonic() < deadline, "the stand-in director did not start"
            time.sleep(0.05)
        Path(p["pidfile"]).write_text(f"{proc.pid}\n")
        return proc, marks

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _running_in_group(pgid: int) -> list[str]:
    """The processes of a process group that still run (a zombie, waiting for init to reap it, has ended)."""
    pids = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    states = [subprocess.run(["ps", "-o", "stat=", "-p", pid], capture_output=True, text=True).stdout.strip()
              for pid in pids]
    return [f"{pid} {st}" for pid, st in zip(pids, states) if st and not st.startswith("Z")]


def _meta_data(resource) -> ET.Element:
    result = resource.run("meta-data")
    assert result.returncode == OCF_SUCCESS, result.stderr
    return ET.fromstring(result.stdout)


def test_meta_data_is_valid_against_the_ocf_dtd(resource):
    """ocf-tester's own check: xmllint against ra-api-1.dtd from resource-agents."""
    if shutil.which("xmllint") is None:
        pytest.skip("xmllint is not installed (apt-get install libxml2-utils)")
    meta = resource.run("meta-data").stdout
    dtd_dir = Path("/usr/share/resource-agents")
    check = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=meta, cwd=dtd_dir,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_meta_data_describes_parameters_defaults_and_actions(resource):
    """The parameters with the defaults the brief of the agent promises; every action with a timeout."""
    assert os.access(AGENT, os.X_OK)  # Pacemaker runs the file itself
    root = _meta_data(resource)
    assert root.get("name") == "director"
    assert root.findtext("version") == "1.1"  # OCF 1.1: reload re-reads the file, not the parameters
    assert "failover:" in root.findtext("longdesc")  # the cluster manager owns the VIP
    params = {p.get("name"): p for p in root.iter("parameter")}
    defaults = {name: p.find("content").get("default") for name, p in params.items()}
    assert defaults == {"config": "/etc/lvsmail/cluster.yaml", "binary": "/usr/bin/lvsmail",
                        "state_dir": "/run/lvsmail", "flush_on_stop": "false", "options": "",
                        "logfile": "", "pidfile": ""}
    assert params["flush_on_stop"].find("content").get("type") == "boolean"
    for p in params.values():
        assert p.findtext("shortdesc").strip() and p.findtext("longdesc").strip()
    actions = root.find("actions").findall("action")
    assert {a.get("name") for a in actions} == {"start", "stop", "monitor", "reload", "validate-all",
                                               "meta-data", "usage"}
    assert all(a.get("timeout", "").endswith("s") for a in actions)
    assert sorted(a.get("depth") for a in actions if a.get("name") == "monitor") == ["0", "10"]


def test_the_agent_uses_options_the_director_has():
    """The options the agent passes exist in the CLI, and its state directory default is the director's."""
    from lvsmail.commands.director import director

    start = {opt for p in director.commands["start"].params for opt in p.opts}
    status = {opt for p in director.commands["status"].params for opt in p.opts}
    text = AGENT.read_text()
    for opt in ("-c", "--state-dir", "--flush-on-exit"):
        assert opt in start and f" {opt}" in text
    for opt in ("-c", "--state-dir", "--json"):
        assert opt in status
    state_dir = next(p for p in director.commands["start"].params if "--state-dir" in p.opts)
    assert f"OCF_RESKEY_state_dir_default={state_dir.default}" in text


def test_validate_all_accepts_a_good_file(resource):
    result = resource.run("validate-all")
    assert result.returncode == OCF_SUCCESS, result.stderr


def test_validate_all_refuses_a_bad_file_as_misconfigured(resource, tmp_path):
    """OCF_ERR_CONFIGURED (the same on every node); the reason names file and line, as the loader does."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 25", "port: 25\n    colour: blue"))
    resource.params["config"] = str(bad)
    result = resource.run("validate-all")
    assert result.returncode == OCF_ERR_CONFIGURED
    assert exit_reason(result).startswith(f"{bad}:8:") and "colour" in exit_reason(result)


def test_validate_all_without_the_binary_is_not_installed(resource, tmp_path):
    resource.params["binary"] = str(tmp_path / "no-such-lvsmail")
    result = resource.run("validate-all")
    assert result.returncode == OCF_ERR_INSTALLED
    assert "no-such-lvsmail" in exit_reason(result)


def test_validate_all_without_the_file_on_this_node_is_not_installed(resource, tmp_path):
    """A cluster file on shared storage mounted on another node: a local problem, not a cluster-wide one."""
    resource.params["config"] = str(tmp_path / "elsewhere" / "cluster.yaml")
    result = resource.run("validate-all")
    assert result.returncode == OCF_ERR_INSTALLED
    assert "cannot read the cluster file" in exit_reason(result)


@pytest.mark.parametrize("name, value", [("config", "cluster.yaml"), ("state_dir", "run/lvsmail"),
                                         ("flush_on_stop", "perhaps")])
def test_validate_all_refuses_bad_parameters(resource, name, value):
    resource.params[name] = value
    result = resource.run("validate-all")
    assert result.returncode == OCF_ERR_CONFIGURED
    assert value in exit_reason(result)


def test_monitor_of_a_stopped_director_is_not_running(resource):
    assert resource.run("monitor").returncode == OCF_NOT_RUNNING
    assert resource.run("monitor", OCF_CHECK_LEVEL="10").returncode == OCF_NOT_RUNNING


def test_probe_without_the_binary_is_not_running(resource, tmp_path):
    """Pacemaker probes every node, also those where lvsmail is not installed: stopped, not failed."""
    resource.params["binary"] = str(tmp_path / "no-such-lvsmail")
    assert resource.run("monitor", interval_ms=0).returncode == OCF_NOT_RUNNING


def test_a_director_that_died_is_a_failure_and_stop_cleans_up(resource):
    """A pid file without its process: monitor says failed (not stopped), and stop succeeds."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = Path(resource.params["pidfile"])
    pidfile.write_text(f"{dead.pid}\n")
    result = resource.run("monitor")
    assert result.returncode == OCF_ERR_GENERIC
    assert "died without a stop" in exit_reason(result)
    assert resource.run("stop").returncode == OCF_SUCCESS
    assert not pidfile.exists()
    assert resource.run("monitor").returncode == OCF_NOT_RUNNING


def test_a_recycled_pid_is_not_taken_for_the_director_nor_killed(resource):
    """The pid file names a live process that is not our director: failed, and stop leaves it alone."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        Path(resource.params["pidfile"]).write_text(f"{other.pid}\n")
        assert resource.run("monitor").returncode == OCF_ERR_GENERIC
        assert resource.run("stop").returncode == OCF_SUCCESS
        assert other.poll() is None, "stop killed a process that was not the director"
    finally:
        other.kill()
        other.wait()


def test_stop_ends_the_director_with_sigterm(resource, stand_in):
    proc, _ = stand_in()
    assert resource.run("monitor").returncode == OCF_SUCCESS
    result = resource.run("stop")
    assert result.returncode == OCF_SUCCESS, result.stderr
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert not Path(resource.params["pidfile"]).exists()
    assert resource.run("monitor").returncode == OCF_NOT_RUNNING
    assert resource.run("stop").returncode == OCF_SUCCESS  # stopping a stopped resource succeeds


def test_stop_kills_the_process_group_when_sigterm_is_ignored(resource, stand_in):
    """Within the operation's timeout: SIGTERM, then SIGKILL to the director and its check workers."""
    proc, _ = stand_in(ignore_term=True)
    t0 = time.monotonic()
    result = resource.run("stop", timeout_ms=7000)  # 7 s less the agent's 5 s margin: 2 s of grace
    took = time.monotonic() - t0
    assert result.returncode == OCF_SUCCESS, result.stderr
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert 2 <= took < 7, f"stop took {took:.1f} s"
    assert _running_in_group(proc.pid) == [], "the check worker outlived the stop"
    assert "did not exit within 2 s" in result.stderr


def test_reload_of_a_broken_file_is_refused_and_the_director_not_signalled(resource, stand_in):
    """Neither signalled nor restarted (the stand-in's pid file records no parameters, which after a
    parameter change means a restart): a broken file never takes a running director down."""
    proc, marks = stand_in()
    Path(resource.params["config"]).write_text(GOOD.replace("scheduler: wlc", "scheduler: fastest"))
    result = resource.run("reload")
    assert result.returncode == OCF_ERR_CONFIGURED
    assert "scheduler" in exit_reason(result)
    time.sleep(0.2)
    assert "HUP" not in marks.read_text()
    assert proc.poll() is None


def test_reload_of_a_stopped_director_is_not_running(resource):
    assert resource.run("reload").returncode == OCF_NOT_RUNNING


def test_an_unknown_action_is_unimplemented(resource):
    result = resource.run("promote")
    assert result.returncode == OCF_ERR_UNIMPLEMENTED
    assert "Usage:" in result.stderr


def _kernel_has_ipvs() -> bool:
    if Path("/proc/net/ip_vs").exists():
        return True
    modprobe = shutil.which("modprobe", path="/sbin:/usr/sbin:/bin:/usr/bin")
    return modprobe is not None and subprocess.run([modprobe, "-n", "-q", "ip_vs"]).returncode == 0


def test_start_on_a_kernel_without_ipvs_is_not_installed(resource):
    """The node cannot run a director (another may): OCF_ERR_INSTALLED, nothing left running."""
    if _kernel_has_ipvs():
        pytest.skip("this kernel has IPVS: the agent's start would program it (tests/kernel covers that)")
    result = resource.run("start")
    assert result.returncode == OCF_ERR_INSTALLED
    assert "no IPVS" in exit_reason(result)
    assert not Path(resource.params["pidfile"]).exists()
    assert resource.run("monitor").returncode == OCF_NOT_RUNNING

