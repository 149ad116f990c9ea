"""The seed's director stack (heartbeat 3 haresources + ldirectord) as the lab writes it: ha.cf, haresources
and authkeys with the seed's values, ldirectord.cf through the exporter, and the lab's LVSSyncDaemonSwap
resource script run against an ipvsadm double that refuses what the kernel refuses."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from lvsmail.interop.ldirectord import import_ldirectord
from lvsmail.lab import stacks
from lvsmail.lab.cluster_up import MailCluster
from lvsmail.lab.stacks import seed
from lvsmail.lab.topology import GW_FRONT, VIP


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# -- ha.cf, haresources, authkeys --------------------------------------------------------------------

def test_ha_cf_carries_the_seeds_timing_transport_and_nodes(tmp_path):
    lines = _lines(seed.ha_cf(tmp_path, GW_FRONT))
    for wanted in ("keepalive 2", "deadtime 10", "initdead 120", "udpport 694", "bcast eth0", "auto_failback off",
                   "node loadb1", "node loadb2", f"ping {GW_FRONT}",
                   "respawn hacluster /usr/libexec/heartbeat/ipfail"):
        assert wanted in lines, wanted
    # heartbeat reads udpport when it opens a medium: the port must come before `bcast`.
    assert lines.index("udpport 694") < lines.index("bcast eth0")
    # The logs end in .log, so the lab keeps them with the others (MailCluster.save_logs).
    assert f"logfile {tmp_path / 'heartbeat.log'}" in lines
    assert f"debugfile {tmp_path / 'heartbeat-debug.log'}" in lines
    # haresources mode: no CRM directive at all (heartbeat 3's default is no CRM).
    assert not [line for line in lines if line.split()[0] in ("crm", "pacemaker")]


def test_ha_cf_initdead_can_be_changed_only_when_asked(tmp_path):
    assert "initdead 30" in _lines(seed.ha_cf(tmp_path, GW_FRONT, initdead=30))
    assert seed.SeedStack().initdead == 120


def test_haresources_is_the_seeds_group_on_loadb1():
    assert seed.haresources(VIP, 24, "eth0", "192.0.2.255") == (
        "loadb1 IPaddr2::192.0.2.33/24/eth0/192.0.2.255 ldirectord::ldirectord.cf LVSSyncDaemonSwap::master\n")


def test_authkeys_signs_with_sha1_and_refuses_an_empty_or_spaced_secret():
    assert seed.authkeys("s3cret") == "auth 1\n1 sha1 s3cret\n"
    for bad in ("", "two words", "tab\there"):
        with pytest.raises(ValueError, match="one non-empty word"):
            seed.authkeys(bad)


def test_stack_identity_split_rule_failback_and_join_leave_na():
    stack = stacks.get("seed")
    assert isinstance(stack, seed.SeedStack) and stack.name == "seed"
    assert stack.failback is False  # auto_failback off
    assert stack.table_on_standby is False  # ldirectord runs where the resources are
    assert stack.split_rule == "udp dport 694"
    assert stack.not_applicable("join_leave") == \
        "no registration API: real servers are listed statically in ldirectord.cf"
    assert stack.not_applicable("director_kill") is None and stack.not_applicable("reload") is None


# -- every director's files ----------------------------------------------------------------------------

@pytest.fixture
def stock(tmp_path, monkeypatch):
    """A stand-in for Debian's /etc/ha.d and /var/lib/heartbeat (the test needs neither root nor heartbeat)."""
    ha_d = tmp_path / "stock-ha.d"
    (ha_d / "rc.d").mkdir(parents=True)
    (ha_d / "resource.d").mkdir()
    (ha_d / "harc").write_text("#!/bin/sh\n")
    (ha_d / "resource.d" / "IPaddr2").write_text("#!/bin/sh\n")
    var_lib = tmp_path / "stock-var-lib"
    (var_lib / "cores" / "hacluster").mkdir(parents=True)
    os.chmod(var_lib / "cores" / "hacluster", 0o700)
    (var_lib / "hb_uuid").write_bytes(b"the host's own uuid")  # must never be copied: each node needs its own
    monkeypatch.setattr(seed, "STOCK_HA_D", ha_d)
    monkeypatch.setattr(seed, "STOCK_VAR_LIB", var_lib)
    return tmp_path


@pytest.mark.parametrize("mode, forwarding", [("tun", "ipip"), ("dr", "gate")])
def test_write_configs_gives_each_director_its_ha_d_and_var_lib(stock, mode, forwarding):
    cluster = MailCluster(mode, 2, state_dir=stock / "state", prefix="unitseed", stack="seed")
    cluster.work.mkdir(parents=True)
    cluster.weights["rs2"] = 3
    cluster.write_configs()
    keys = set()
    for d in cluster.directors:
        etc = d.workdir / "etc-ha.d"
        assert (etc / "harc").exists() and (etc / "resource.d" / "IPaddr2").exists()  # Debian's stock files
        assert (etc / "ha.cf").read_text() == seed.ha_cf(d.workdir, GW_FRONT)
        assert (etc / "haresources").read_text() == seed.haresources(VIP, 24, "eth0", "192.0.2.255")
        mode_bits = stat.S_IMODE((etc / "authkeys").stat().st_mode)
        assert mode_bits == 0o600, oct(mode_bits)  # heartbeat refuses a readable authkeys
        keys.add((etc / "authkeys").read_text())
        script = etc / "resource.d" / "LVSSyncDaemonSwap"
        assert os.access(script, os.X_OK)
        assert 'SYNC_INTERFACE="eth1"' in script.read_text() and 'SYNC_ID="7"' in script.read_text()
        var_lib = d.workdir / "var-lib-heartbeat"
        assert stat.S_IMODE((var_lib / "cores" / "hacluster").stat().st_mode) == 0o700
        assert not (var_lib / "hb_uuid").exists()

        cf = (etc / "ldirectord.cf").read_text()
        lines = [line.strip() for line in cf.splitlines()]
        for wanted in ("checktimeout=10", "checkinterval=2", "autoreload=no", "quiescent=no",
                       f'logfile="{d.workdir / "ldirectord.log"}"', "request=\"/solicitud.html\"",
                       'receive="test page"'):
            assert wanted in lines, wanted
        assert f"real=198.51.100.32:25 {forwarding} 3    # rs2" in lines  # the cluster's weights
        imported = import_ldirectord(cf).spec
        services = {s.port: s for s in imported.services}
        assert set(services) == {25, 143, 80}
        assert services[25].persistent == 120 and services[143].persistent in (None, 0)
        assert {s.scheduler for s in services.values()} == {"wlc"}
        assert {s.forwarding for s in services.values()} == {mode}
        assert [r.address for r in services[80].realservers] == ["198.51.100.20", "198.51.100.32"]
    assert len(keys) == 1  # both directors sign with one key


def test_reload_rewrites_every_ldirectord_cf_and_leaves_a_standby_alone(stock):
    cluster = MailCluster("tun", 2, state_dir=stock / "state", prefix="unitseed", stack="seed")
    cluster.work.mkdir(parents=True)
    cluster.write_configs()
    cluster.weights["rs1"] = 5
    cluster.stack.reload(cluster)  # no ldirectord runs: nothing to signal, the files change
    for d in cluster.directors:
        assert "real=198.51.100.20:25 ipip 5    # rs1" in \
            [line.strip() for line in (d.workdir / "etc-ha.d" / "ldirectord.cf").read_text().splitlines()]
        assert not (d.workdir / "etc-ha.d" / "ldirectord.tmp").exists()


# -- which processes are a director's ------------------------------------------------------------------

def test_alive_needs_heartbeats_pid_file_and_the_directors_mount_namespace(tmp_path):
    stack = seed.SeedStack()
    d = type("D", (), {"workdir": tmp_path, "number": 1, "pid": None})()
    assert stack.alive(None, d) is False  # never started
    child = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "heartbeat.pid").write_text(f"{child.pid}\n")
        (tmp_path / "mntns").write_text("mnt:[1]\n")  # another namespace: a recycled pid is not heartbeat
        assert stack.alive(None, d) is False
        (tmp_path / "mntns").write_text(os.readlink(f"/proc/{child.pid}/ns/mnt") + "\n")
        assert stack.alive(None, d) is True
        child.kill()
        child.wait()
        assert stack.alive(None, d) is False
    finally:
        child.kill()
        child.wait()


def test_kill_of_a_director_never_started_is_an_error_naming_it(tmp_path):
    d = type("D", (), {"workdir": tmp_path, "number": 2, "pid": None})()
    with pytest.raises(seed.SeedStackError, match="director2 was never started"):
        seed.SeedStack().kill(None, d)


# -- LVSSyncDaemonSwap ---------------------------------------------------------------------------------

#: An ipvsadm double keeping the sync daemons in a file; like the kernel, it refuses to start a running
#: daemon (EEXIST) and to stop one that is not running (ESRCH), and logs each call.
FAKE_IPVSADM = r"""#!/bin/sh
state="$FAKE_STATE"; touch "$state"
echo "$*" >> "$state.calls"
case "$1" in
  -L) while read -r role iface id; do
        echo "$role sync daemon (mcast=$iface, syncid=$id, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"
      done < "$state" ;;
  --start-daemon)
      grep -q "^$2 " "$state" && { echo "Memory allocation problem" >&2; exit 1; }
      [ "$3" = --mcast-interface ] && [ "$5" = --syncid ] || { echo "bad arguments: $*" >&2; exit 2; }
      echo "$2 $4 $6" >> "$state" ;;
  --stop-daemon)
      grep -q "^$2 " "$state" || { echo "No such process" >&2; exit 1; }
      grep -v "^$2 " "$state" > "$state.new"; mv "$state.new" "$state" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def swap(tmp_path):
    """Run the generated LVSSyncDaemonSwap against the double; returns (run, daemons, calls)."""
    fake = tmp_path / "ipvsadm"
    fake.write_text(FAKE_IPVSADM)
    fake.chmod(0o755)
    script = tmp_path / "LVSSyncDaemonSwap"
    script.write_text(seed.sync_swap_script("eth1", 7))
    script.chmod(0o755)
    state = tmp_path / "daemons"
    env = dict(os.environ, IPVSADM=str(fake), FAKE_STATE=str(state))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=30)

    def daemons() -> set[str]:
        return set(state.read_text().splitlines()) if state.exists() else set()

    def calls() -> list[str]:
        path = Path(f"{state}.calls")
        return [c for c in path.read_text().splitlines() if c != "-L --daemon"] if path.exists() else []

    return run, daemons, calls


def test_master_start_turns_a_standbys_backup_daemon_into_the_master(swap):
    run, daemons, calls = swap
    assert run("master", "stop").returncode == 0  # the standby: backup on
    assert daemons() == {"backup eth1 7"}
    done = run("master", "start")
    assert done.returncode == 0, done.stderr
    assert daemons() == {"master eth1 7"}
    assert calls()[-2:] == ["--stop-daemon backup", "--start-daemon master --mcast-interface eth1 --syncid 7"]
    status = run("master", "status")
    assert (status.returncode, status.stdout.strip()) == (0, "running")


def test_master_stop_gives_the_master_role_up_and_becomes_backup(swap):
    run, daemons, calls = swap
    run("master", "start")
    done = run("master", "stop")
    assert done.returncode == 0, done.stderr
    assert daemons() == {"backup eth1 7"}
    assert calls()[-2:] == ["--stop-daemon master", "--start-daemon backup --mcast-interface eth1 --syncid 7"]
    status = run("master", "status")
    # ResourceManager greps the output: "stopped" must not read as running; LSB status 3.
    assert (status.returncode, status.stdout.strip()) == (3, "stopped")


def test_start_and_stop_repeat_without_failing_as_heartbeat_requires(swap):
    run, daemons, _calls = swap
    for _ in range(2):
        assert run("master", "start").returncode == 0
    assert daemons() == {"master eth1 7"}
    for _ in range(2):
        assert run("master", "stop").returncode == 0
    assert daemons() == {"backup eth1 7"}


def test_a_failing_ipvsadm_fails_the_resource(swap, tmp_path):
    run, daemons, _calls = swap
    (tmp_path / "daemons").write_text("backup eth1 7\n")
    (tmp_path / "ipvsadm").write_text("#!/bin/sh\ncase $1 in -L) echo 'backup sync daemon (mcast=eth1)';;"
                                     " *) echo 'Protocol not available' >&2; exit 1;; esac\n")
    done = run("master", "start")
    assert done.returncode != 0 and "Protocol not available" in done.stderr


def test_usage_errors_exit_2(swap):
    run, _daemons, calls = swap
    for args in ((), ("master",), ("primary", "start"), ("master", "restart")):
        done = run(*args)
        assert done.returncode == 2 and "usage:" in done.stderr, args
    assert calls() == []


def test_sync_swap_script_refuses_bad_values():
    with pytest.raises(ValueError, match="interface"):
        seed.sync_swap_script("eth1; reboot", 7)
    with pytest.raises(ValueError, match="syncid"):
        seed.sync_swap_script("eth1", 256)


def test_director_start_script_checks_its_arguments():
    script = seed.FILES / "director.sh"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(["sh", str(script), "only-one"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_start_refuses_while_the_directors_processes_still_run(tmp_path):
    d = type("D", (), {"workdir": tmp_path, "number": 1, "pid": None, "ns": "unused"})()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "marker").write_text("left by the running director")
    (tmp_path / "mntns").write_text(os.readlink("/proc/self/ns/mnt") + "\n")  # this test's own processes
    with pytest.raises(seed.SeedStackError, match="director1 still runs"):
        seed.SeedStack().start(None, d)
    assert (tmp_path / "run" / "marker").exists()  # nothing of the running director was touched
