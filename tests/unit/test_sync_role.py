"""The IPVS sync daemon: the fake refuses what the kernel refuses, SyncRole swaps roles,
the director follows the file."""

import asyncio
import errno
import json
import socket

import pytest

from lvsmail.config import ConfigError
from lvsmail.config.loader import dump_cluster, parse_cluster
from lvsmail.director.daemon import Director
from lvsmail.director.sync import SyncRole, initial_role
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import (
    DestEntry,
    DestKey,
    DestSettings,
    IPVSError,
    ServiceEntry,
    ServiceKey,
    ServiceSettings,
    SyncDaemon,
    describe,
)
from lvsmail.net.sysctl import FakeSysctl
from lvsmail.spec import SyncSpec
from support.cluster import cluster_yaml, service

#: One DR service in eight lines (a sync: section added to it starts on line 9).
BASE = cluster_yaml(service(forwarding="dr", realservers=["198.51.100.20"]), name="pair")


def run(coro):
    return asyncio.run(coro)


def states(kernel: FakeIPVS) -> list[str]:
    return [d.state for d in run(kernel.daemons())]


# -- the fake kernel -------------------------------------------------------------------

def test_fake_refuses_a_second_master_but_runs_master_and_backup_together():
    kernel = FakeIPVS(interfaces={"eth0"})
    run(kernel.start_daemon(SyncDaemon("master", "eth0", 1)))
    with pytest.raises(IPVSError) as exc:
        run(kernel.start_daemon(SyncDaemon("master", "eth0", 2)))
    assert exc.value.errno == errno.EEXIST
    run(kernel.start_daemon(SyncDaemon("backup", "eth0", 1)))
    assert states(kernel) == ["master", "backup"]


def test_fake_reports_the_kernels_defaults_for_a_daemon_started_without_them():
    kernel = FakeIPVS()
    run(kernel.start_daemon(SyncDaemon("backup", "eth1", 9)))
    (d,) = run(kernel.daemons())
    assert (d.group, d.port, d.ttl, d.maxlen) == ("224.0.0.81", 8848, 1, 1472)


@pytest.mark.parametrize("daemon,err", [
    (SyncDaemon("master", "nosuch0"), errno.ENODEV),
    (SyncDaemon("master", "eth0", group="192.0.2.1"), errno.EINVAL),
    (SyncDaemon("primary", "eth0"), errno.EINVAL),
], ids=["unknown-interface", "unicast-group", "unknown-state"])
def test_fake_refuses_what_start_sync_thread_refuses(daemon, err):
    kernel = FakeIPVS(interfaces={"eth0"})
    with pytest.raises(IPVSError) as exc:
        run(kernel.start_daemon(daemon))
    assert exc.value.errno == err and not run(kernel.daemons())


def test_fake_refuses_sync_with_mixed_family_real_servers():
    six = ServiceKey(socket.AF_INET6, socket.IPPROTO_TCP, "2001:db8:f::33", 25)
    dest = DestEntry(DestSettings("tun", af=socket.AF_INET))
    entry = ServiceEntry(ServiceSettings(), {DestKey("198.51.100.20", 25): dest})
    kernel = FakeIPVS({six: entry})
    with pytest.raises(IPVSError) as exc:
        run(kernel.start_daemon(SyncDaemon("master", "eth0")))
    assert exc.value.errno == errno.EINVAL


def test_stopping_a_daemon_that_does_not_run_is_esrch_and_named_for_the_operator():
    with pytest.raises(IPVSError) as exc:
        run(FakeIPVS().stop_daemon("backup"))
    assert exc.value.errno == errno.ESRCH and "stop backup sync daemon" in str(exc.value)
    assert describe(SyncDaemon("master", "eth0", 3)) == "start master sync daemon on eth0 syncid 3"


# -- SyncRole --------------------------------------------------------------------------

def test_failover_swaps_the_daemons_and_stops_the_old_role_first():
    kernel = FakeIPVS(interfaces={"eth1"})
    role = SyncRole(kernel, SyncSpec("eth1", syncid=5))

    async def go():
        await role.become_backup()
        assert [d.state for d in await kernel.daemons()] == ["backup"]
        await role.become_master()
        assert [d.state for d in await kernel.daemons()] == ["master"]
        await role.become_backup()

    run(go())
    assert kernel.daemon_calls == ["start backup", "stop backup", "start master", "stop master", "start backup"]
    assert role.status()["role"] == "backup" and role.status()["transitions"] == 3


def test_becoming_the_same_role_twice_touches_nothing():
    kernel = FakeIPVS()
    role = SyncRole(kernel, SyncSpec("eth0"))
    run(role.become_master())
    run(role.become_master())
    assert kernel.daemon_calls == ["start master"] and role.transitions == 1


def test_a_daemon_started_by_hand_with_other_settings_is_replaced():
    kernel = FakeIPVS()
    run(kernel.start_daemon(SyncDaemon("master", "eth0", syncid=99)))
    run(SyncRole(kernel, SyncSpec("eth0", syncid=5)).become_master())
    (d,) = run(kernel.daemons())
    assert (d.state, d.syncid) == ("master", 5)


def test_changed_settings_on_reload_restart_the_current_role_only():
    kernel = FakeIPVS()
    role = SyncRole(kernel, SyncSpec("eth0", syncid=5))
    run(role.become_backup())
    run(role.update(SyncSpec("eth0", syncid=5)))  # unchanged
    run(role.update(SyncSpec("eth0", syncid=6, port=9000)))
    (d,) = run(kernel.daemons())
    assert (d.state, d.syncid, d.port) == ("backup", 6, 9000)
    assert kernel.daemon_calls == ["start backup", "stop backup", "start backup"]


def test_a_refused_start_is_raised_for_the_failover_code_and_shown_in_status():
    kernel = FakeIPVS(interfaces={"eth0"})
    role = SyncRole(kernel, SyncSpec("eth9"))
    with pytest.raises(IPVSError):
        run(role.become_master())
    assert role.role == "stopped" and "ENODEV" in role.status()["last_error"]


def test_stop_leaves_no_daemon():
    kernel = FakeIPVS()
    role = SyncRole(kernel, SyncSpec("eth0"))
    run(role.become_master())
    run(role.stop())
    assert not run(kernel.daemons()) and role.role == "stopped"


# -- the sync: section -----------------------------------------------------------------

def test_sync_section_reads_and_dumps_back():
    spec = parse_cluster(BASE + "sync: {interface: eth1, syncid: 7, group: 239.0.0.81, port: 8900, ttl: 2,"
                                " maxlen: 1400, role: backup}\n")
    assert spec.sync == SyncSpec("eth1", 7, 1400, "239.0.0.81", 8900, 2, "backup")
    assert parse_cluster(dump_cluster(spec)).sync == spec.sync
    assert parse_cluster(BASE + "sync: {interface: eth1}\n").sync == SyncSpec("eth1")


def test_sync_section_errors_name_line_and_key_all_at_once():
    text = BASE + ("sync:\n  interface: eth0/1\n  syncid: 256\n  group: 192.0.2.9\n  ttl: 0\n"
                   "  role: primary\n  mode: x\n")
    with pytest.raises(ConfigError) as exc:
        parse_cluster(text, "c.yaml")
    msg = str(exc.value)
    for where in ("c.yaml:10: sync.interface", "c.yaml:11: sync.syncid", "c.yaml:12: sync.group",
                  "c.yaml:13: sync.ttl", "c.yaml:14: sync.role", "c.yaml:15: sync.mode"):
        assert where in msg, msg
    assert "not a multicast address" in msg and "between 0 and 255" in msg


def test_sync_section_beside_a_real_server_of_the_other_family_is_refused_at_load():
    # The kernel starts no sync daemon while a mixed-family destination exists, and adds none
    # while a daemon runs (EINVAL either way, as FakeIPVS refuses above): say so at load time.
    mixed = cluster_yaml(service(forwarding="tun", realservers=["198.51.100.20", "2001:db8::20"]), name="pair",
                         extra="sync: {interface: eth0}\n")
    with pytest.raises(ConfigError) as exc:
        parse_cluster(mixed, "c.yaml")
    assert str(exc.value) == ("c.yaml:9: sync: service smtp has 2001:db8::20, an IPv6 real server in an IPv4 "
                              "service; the kernel runs no connection sync daemon beside real servers of another "
                              "address family")
    # the same file without sync: is a valid mixed-family tun service
    assert parse_cluster(mixed.replace("sync: {interface: eth0}\n", "")).services[0].realservers[1].address \
        == "2001:db8::20"


def test_sync_section_needs_an_interface():
    with pytest.raises(ConfigError, match="missing required key 'interface'"):
        parse_cluster(BASE + "sync: {syncid: 1}\n")


def test_auto_role_is_master_without_failover_and_a_fixed_role_is_kept():
    assert initial_role(parse_cluster(BASE + "sync: {interface: eth0}\n")) == "master"
    assert initial_role(parse_cluster(BASE + "sync: {interface: eth0, role: backup}\n")) == "backup"


# -- the director ----------------------------------------------------------------------

def director(tmp_path, text, kernel, **kw):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    d = Director(str(path), kernel, repair_interval=0.05, state_dir=str(tmp_path / "state"),
                 sysctl=FakeSysctl(), **kw)
    return d, path


async def started(d):
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 5)
    return task


def test_director_takes_its_role_after_programming_the_table_and_keeps_the_daemon_on_exit(tmp_path):
    kernel = FakeIPVS()
    d, _ = director(tmp_path, BASE + "sync: {interface: eth1, syncid: 3, role: backup}\n", kernel)

    async def go():
        task = await started(d)
        assert [x.state for x in await kernel.daemons()] == ["backup"]
        assert kernel.table  # services first: the daemon syncs connections of existing services
        d.request_stop()
        await task

    run(go())
    assert states(kernel) == ["backup"]  # a restarting director must not break sync
    published = json.loads((tmp_path / "state" / "cluster.kernel.json").read_text())
    assert published["sync"]["role"] == "backup" and published["sync"]["syncid"] == 3


def test_director_with_flush_on_exit_stops_the_daemon(tmp_path):
    kernel = FakeIPVS()
    d, _ = director(tmp_path, BASE + "sync: {interface: eth1}\n", kernel, flush_on_exit=True)

    async def go():
        task = await started(d)
        assert [x.state for x in await kernel.daemons()] == ["master"]
        d.request_stop()
        await task

    run(go())
    assert states(kernel) == [] and kernel.table == {}


def test_reload_follows_added_changed_and_removed_sync_sections(tmp_path):
    kernel = FakeIPVS()
    d, path = director(tmp_path, BASE, kernel)

    async def step(text, want):
        path.write_text(text)
        d.request_reload()
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while [(x.state, x.syncid) for x in await kernel.daemons()] != want:
            assert loop.time() < end, f"daemons never became {want}"
            await asyncio.sleep(0.01)

    async def go():
        task = await started(d)
        assert await kernel.daemons() == [] and d.sync is None
        await step(BASE + "sync: {interface: eth0, syncid: 1}\n", [("master", 1)])
        await step(BASE + "sync: {interface: eth0, syncid: 2}\n", [("master", 2)])
        await step(BASE + "sync: {interface: eth0, syncid: 2, role: backup}\n", [("backup", 2)])
        await step(BASE, [])
        d.request_stop()
        await task

    run(go())


def test_a_role_refused_at_start_is_retried_by_the_repair_loop(tmp_path):
    kernel = FakeIPVS(interfaces={"eth0"})  # eth1 appears later, as when links come up after the director
    d, _ = director(tmp_path, BASE + "sync: {interface: eth1, role: backup}\n", kernel)

    async def go():
        task = await started(d)
        assert await kernel.daemons() == [] and d.sync.status()["last_error"]
        kernel.interfaces.add("eth1")
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while [x.state for x in await kernel.daemons()] != ["backup"]:
            assert loop.time() < end, "the refused role was never retried"
            await asyncio.sleep(0.01)
        assert d.sync.status()["last_error"] is None
        d.request_stop()
        await task

    run(go())


def test_retry_does_not_undo_a_daemon_changed_by_hand():
    kernel = FakeIPVS()
    role = SyncRole(kernel, SyncSpec("eth0"))
    run(role.become_backup())
    run(kernel.stop_daemon("backup"))
    assert run(role.retry()) and run(kernel.daemons()) == []
