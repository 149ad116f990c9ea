"""The director loop against the in-memory kernel: start, reload, repair, exit, health."""

import asyncio
import json
import socket

import pytest

from lvsmail.config import ConfigError
from lvsmail.console.outages import outages_path, read_outages
from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import DestEntry, DestKey, DestSettings, ServiceEntry, ServiceKey, ServiceSettings
from support import ScriptedChecks, until
from support.cluster import cluster_yaml, service

SMTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)
HTTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 80)
FOREIGN = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "203.0.113.9", 53)

SMTP_SERVICE = service(persistent=120, forwarding="tun")
HTTP_SERVICE = service("http", 80, realservers=["198.51.100.20"])


@pytest.fixture
def cluster(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(SMTP_SERVICE, HTTP_SERVICE))
    return path


def director(path, kernel, tmp_path, **kw):
    return Director(str(path), kernel, repair_interval=0.05, state_dir=str(tmp_path / "state"), **kw)


async def started(d: Director) -> asyncio.Task:
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 5)
    return task


def _transitions(path) -> set:
    """(address, up, transitions) of each real server in a health file; empty while it is not written."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return set()
    return {(r["address"], r["up"], r["transitions"]) for r in data["realservers"]}


def test_start_programs_the_file_and_exit_leaves_the_table(cluster, tmp_path):
    kernel = FakeIPVS()

    async def go():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        assert set(kernel.table) == {SMTP, HTTP}
        assert kernel.table[SMTP].settings.timeout == 120
        assert {k.addr for k in kernel.table[SMTP].dests} == {"198.51.100.20", "198.51.100.32"}
        d.request_stop()
        await task

    asyncio.run(go())
    assert set(kernel.table) == {SMTP, HTTP}  # hitless restart: table kept


def test_flush_on_exit_removes_only_owned_services(cluster, tmp_path):
    foreign = ServiceEntry(ServiceSettings("rr"), {DestKey("198.51.100.9", 53): DestEntry(DestSettings("nat"))})
    kernel = FakeIPVS({FOREIGN: foreign})

    async def go():
        d = director(cluster, kernel, tmp_path, flush_on_exit=True)
        task = await started(d)
        d.request_stop()
        await task

    asyncio.run(go())
    assert set(kernel.table) == {FOREIGN}


def test_bad_initial_file_never_touches_the_kernel(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(service(scheduler="wlcc", forwarding="tun")))
    kernel = FakeIPVS()
    with pytest.raises(ConfigError, match="wlcc"):
        asyncio.run(director(path, kernel, tmp_path).run())
    assert kernel.table == {} and kernel.executed == []


def test_reload_with_bad_file_keeps_the_running_table(cluster, tmp_path):
    kernel = FakeIPVS()

    async def go():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        before = len(kernel.executed)
        cluster.write_text("cluster: test\nservices: [{name: x, vip: nonsense}]\n")
        d.request_reload()
        await asyncio.sleep(0.2)
        assert set(kernel.table) == {SMTP, HTTP} and len(kernel.executed) == before
        d.request_stop()
        await task

    asyncio.run(go())


def test_reload_applies_a_changed_file(cluster, tmp_path):
    kernel = FakeIPVS()

    async def go():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        cluster.write_text(cluster_yaml(SMTP_SERVICE))  # http service removed
        d.request_reload()
        await until(lambda: set(kernel.table) == {SMTP})
        d.request_stop()
        await task

    asyncio.run(go())


def test_drift_is_repaired_within_one_repair_period(cluster, tmp_path):
    kernel = FakeIPVS()

    async def go():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        kernel.table.clear()  # ipvsadm -C by someone else
        await until(lambda: set(kernel.table) == {SMTP, HTTP}, timeout=1.0)
        d.request_stop()
        await task

    asyncio.run(go())


def test_service_dropped_while_director_was_down_is_removed_on_start(cluster, tmp_path):
    kernel = FakeIPVS()

    async def run_once():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        d.request_stop()
        await task

    asyncio.run(run_once())
    cluster.write_text(cluster_yaml(SMTP_SERVICE))
    asyncio.run(run_once())
    assert set(kernel.table) == {SMTP}


def health_cluster(quiescent: bool) -> str:
    """One checked SMTP service with a fallback server; the first real server weighs 3."""
    return cluster_yaml(service(forwarding="tun", quiescent=quiescent, fallback="203.0.113.99:25",
                                realservers=[{"address": "198.51.100.20", "weight": 3}, "198.51.100.32"],
                                check={"type": "smtp", "interval": 0.05, "timeout": 0.5}))


def weights(kernel):
    return {k.addr: d.settings.weight for k, d in kernel.table[SMTP].dests.items()}


@pytest.mark.parametrize("quiescent", [False, True])
def test_failed_real_server_leaves_the_kernel_and_returns_on_recovery(tmp_path, quiescent):
    path = tmp_path / "cluster.yaml"
    path.write_text(health_cluster(quiescent))
    kernel, checks = FakeIPVS(), ScriptedChecks()

    async def go():
        d = Director(str(path), kernel, repair_interval=30, state_dir=str(tmp_path / "state"),
                     engine_options={"checker": checks})
        task = await started(d)
        assert weights(kernel) == {"198.51.100.20": 3, "198.51.100.32": 1}
        dumps = kernel.dumps
        checks.down.add("198.51.100.20")
        want = {"198.51.100.20": 0, "198.51.100.32": 1} if quiescent else {"198.51.100.32": 1}
        await until(lambda: weights(kernel) == want)
        assert kernel.dumps == dumps  # the decision reached the kernel without reading the table
        checks.down.add("198.51.100.32")
        fallback = {"203.0.113.99": 1, **({"198.51.100.20": 0, "198.51.100.32": 0} if quiescent else {})}
        await until(lambda: weights(kernel) == fallback)
        checks.down.clear()
        await until(lambda: weights(kernel) == {"198.51.100.20": 3, "198.51.100.32": 1})
        # The health file is rate-limited to one write a second: poll it like `director status` would.
        await until(lambda: _transitions(d.health_file.path) == {
            ("198.51.100.20", True, 2), ("198.51.100.32", True, 2)}, timeout=3)
        health = json.loads(d.health_file.path.read_text())
        assert all("connection refused" in r["last_failure"] for r in health["realservers"])
        # Each removal was measured from the first failed check to the kernel update, for `lvsmail availability`.
        removals = read_outages(outages_path(tmp_path / "state", path)).of("realserver_removal")
        assert sorted(o.detail.split()[0] for o in removals) == ["198.51.100.20:25", "198.51.100.32:25"]
        assert all(0.0 <= o.seconds < 1.0 for o in removals)
        d.request_stop()
        await task

    asyncio.run(go())


def test_maintenance_file_takes_an_unchecked_server_out_and_status_file_says_why(tmp_path):
    maint = tmp_path / "maint"
    maint.mkdir()
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(SMTP_SERVICE, extra=f"maintenance_dir: {maint}\n"))
    kernel = FakeIPVS()

    async def go():
        d = director(path, kernel, tmp_path)
        task = await started(d)
        (maint / "198.51.100.20").write_text("")
        await until(lambda: {k.addr for k in kernel.table[SMTP].dests} == {"198.51.100.32"})
        d.request_stop()
        await task
        return json.loads(d.health_file.path.read_text())

    health = asyncio.run(go())
    rs = next(r for r in health["realservers"] if r["address"] == "198.51.100.20")
    assert (rs["check"], rs["up"]) == ("on", False) and "in maintenance" in rs["last_failure"]
