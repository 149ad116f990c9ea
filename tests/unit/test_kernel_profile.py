"""The director's kernel profile: which sysctls it manages, how it changes them, how status flags them."""

import asyncio
import json
import logging

import pytest

from lvsmail.config import ConfigError
from lvsmail.config.loader import dump_cluster, parse_cluster
from lvsmail.console.status import profile_json, profile_text
from lvsmail.director import kernel_profile
from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import SyncDaemon
from lvsmail.net.sysctl import FakeSysctl
from lvsmail.spec import KernelProfileSpec
from support.cluster import cluster_yaml, service


def base(fwd: str = "dr") -> str:
    """One service forwarding by ``fwd``, in eight lines (a kernel: section added to it starts on line 9)."""
    return cluster_yaml(service(forwarding=fwd, realservers=["198.51.100.20"]), name="pair")


#: The kernel's own defaults (Documentation/networking/ipvs-sysctl.rst).
KERNEL = {"net.ipv4.vs.expire_nodest_conn": "0", "net.ipv4.vs.expire_quiescent_template": "0",
          "net.ipv4.vs.conn_reuse_mode": "1", "net.ipv4.vs.backup_only": "0", "net.ipv4.ip_forward": "0"}


def spec(extra="kernel:\n", fwd="dr"):
    return parse_cluster(base(fwd) + extra)


def test_defaults_reset_dead_connections_and_expire_quiescent_templates_only():
    assert kernel_profile.wanted(spec()) == {"expire_nodest_conn": 1, "expire_quiescent_template": 1}


def test_without_a_kernel_section_nothing_is_managed():
    assert kernel_profile.wanted(spec(extra="")) == {}


def test_ip_forward_is_managed_when_nat_services_exist():
    assert kernel_profile.wanted(spec(fwd="nat"))["ip_forward"] == 1
    assert "ip_forward" not in kernel_profile.wanted(spec(fwd="tun"))


def test_backup_only_is_set_on_a_director_that_is_only_ever_sync_backup():
    fixed = spec(extra="kernel:\nsync: {interface: eth0, role: backup}\n")
    assert kernel_profile.wanted(fixed)["backup_only"] == 1
    # A pair member (role auto) must schedule as soon as it becomes master: left alone.
    assert "backup_only" not in kernel_profile.wanted(spec(extra="kernel:\nsync: {interface: eth0}\n"))


def test_explicit_values_and_unmanaged_keys():
    s = spec(extra="kernel: {conn_reuse_mode: 0, expire_nodest_conn: unmanaged, ip_forward: 1}\n")
    assert s.kernel == KernelProfileSpec(expire_nodest_conn=None, conn_reuse_mode=0, ip_forward=1)
    assert kernel_profile.wanted(s) == {"expire_quiescent_template": 1, "conn_reuse_mode": 0, "ip_forward": 1}
    assert parse_cluster(dump_cluster(s)).kernel == s.kernel


def test_bad_values_are_reported_with_line_and_key():
    text = base("dr") + "kernel:\n  conn_reuse_mode: 4\n  expire_nodest_conn: auto\n  ip_fwd: 1\n"
    with pytest.raises(ConfigError) as exc:
        parse_cluster(text, "c.yaml")
    msg = str(exc.value)
    assert "c.yaml:10: kernel.conn_reuse_mode: must be between 0 and 3, got 4" in msg
    assert "c.yaml:11: kernel.expire_nodest_conn: expected an integer from 0 to 1 or unmanaged" in msg
    assert "c.yaml:12: kernel.ip_fwd: unknown key" in msg and "did you mean 'ip_forward'" in msg


def test_apply_writes_only_managed_keys_that_differ_and_logs_the_old_value(caplog):
    sysctl = FakeSysctl(dict(KERNEL, **{"net.ipv4.vs.expire_quiescent_template": "1"}))
    with caplog.at_level(logging.INFO, "lvsmail.director"):
        changes = kernel_profile.apply(spec(), sysctl)
    assert sysctl.writes == [("net.ipv4.vs.expire_nodest_conn", "1")]
    assert [(c.key, c.old, c.new, c.error) for c in changes] == [("net.ipv4.vs.expire_nodest_conn", "0", "1", None)]
    assert "net.ipv4.vs.expire_nodest_conn 0 -> 1" in caplog.text
    assert kernel_profile.apply(spec(), sysctl) == []  # second time: nothing to do


def test_a_missing_key_is_reported_not_raised():
    sysctl = FakeSysctl({"net.ipv4.vs.expire_quiescent_template": "0"})  # as if ip_vs were not loaded
    changes = kernel_profile.apply(spec(), sysctl)
    assert [(c.key, c.error is not None) for c in changes] == [
        ("net.ipv4.vs.expire_nodest_conn", True), ("net.ipv4.vs.expire_quiescent_template", False)]
    assert sysctl.values["net.ipv4.vs.expire_quiescent_template"] == "1"


def test_status_flags_a_wrong_value_in_text_and_json():
    sysctl = FakeSysctl(dict(KERNEL, **{"net.ipv4.vs.expire_quiescent_template": "1"}))
    rows = kernel_profile.report(sysctl, kernel_profile.wanted(spec()))
    daemons = [SyncDaemon("backup", "eth1", 3, 1472, "224.0.0.81", 8848, 1)]
    text = profile_text(rows, daemons, [])
    assert "net.ipv4.vs.expire_nodest_conn" in text and "WRONG, profile wants 1" in text
    line = next(x for x in text.splitlines() if "expire_quiescent_template" in x)
    assert line.split()[1:] == ["1", "ok"]
    assert "not managed" in next(x for x in text.splitlines() if "conn_reuse_mode" in x)
    assert "backup on eth1 syncid 3" in text
    data = profile_json(rows, daemons, [])
    assert data["kernel"]["ok"] is False
    bad = [r["key"] for r in data["kernel"]["sysctls"] if not r["ok"]]
    assert bad == ["net.ipv4.vs.expire_nodest_conn"]
    assert data["sync"]["daemons"][0]["state"] == "backup"
    json.dumps(data)  # plain data


def test_director_applies_the_profile_at_start_and_on_reload(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(base("dr") + "kernel:\n")
    sysctl = FakeSysctl(KERNEL)
    d = Director(str(path), FakeIPVS(), repair_interval=0.05, state_dir=str(tmp_path / "state"), sysctl=sysctl)

    async def go():
        task = asyncio.create_task(d.run())
        await asyncio.wait_for(d.ready.wait(), 5)
        assert sysctl.values["net.ipv4.vs.expire_nodest_conn"] == "1"
        sysctl.values["net.ipv4.vs.expire_nodest_conn"] = "0"  # someone changed it by hand
        path.write_text(base("nat") + "kernel: {conn_reuse_mode: 2}\n")
        d.request_reload()
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while sysctl.values["net.ipv4.ip_forward"] != "1":
            assert loop.time() < end
            await asyncio.sleep(0.01)
        d.request_stop()
        await task

    asyncio.run(go())
    assert sysctl.values["net.ipv4.vs.expire_nodest_conn"] == "1"
    assert sysctl.values["net.ipv4.vs.conn_reuse_mode"] == "2"
    assert sysctl.values["net.ipv4.vs.backup_only"] == "0"  # never touched
    published = json.loads((tmp_path / "state" / "cluster.kernel.json").read_text())
    assert published["wanted"]["conn_reuse_mode"] == 2
