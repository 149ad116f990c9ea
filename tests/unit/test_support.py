"""The shared test helpers (tests/support): the cluster-file factory and the polling wait."""

import asyncio

import pytest

from lvsmail.config import parse_cluster
from support import ScriptedChecks, until
from support.cluster import REALSERVERS, VIP, cluster_file, cluster_yaml, service


def test_the_default_cluster_is_one_smtp_service_on_two_real_servers():
    spec = parse_cluster(cluster_yaml())
    assert spec.name == "test" and spec.vips == (VIP,)
    [svc] = spec.services
    assert (svc.name, svc.vip, svc.port) == ("smtp", VIP, 25)
    assert tuple(rs.address for rs in svc.realservers) == REALSERVERS


def test_services_take_their_own_keys_and_a_shared_check(tmp_path):
    path = cluster_file(tmp_path, service(forwarding="tun", persistent=120, check={"type": "connect"}),
                        service("http", 80, realservers=[{"address": "198.51.100.20", "weight": 3}]),
                        check={"type": "smtp", "interval": 0.05}, name="mail", extra="maintenance_dir: /tmp/m")
    assert path == tmp_path / "cluster.yaml"
    spec = parse_cluster(path.read_text())
    smtp, http = spec.services
    assert (spec.name, smtp.forwarding, smtp.persistent, smtp.check.type) == ("mail", "tun", 120, "connect")
    assert (http.check.type, http.check.interval) == ("smtp", 0.05)  # the shared check where none is given
    assert [(rs.address, rs.weight) for rs in http.realservers] == [("198.51.100.20", 3)]
    assert path.read_text().endswith("maintenance_dir: /tmp/m\n")


def test_a_none_value_drops_the_key():
    assert "vip" not in service(vip=None)


def test_until_returns_once_the_condition_holds_and_fails_when_it_never_does():
    async def go():
        seen = []
        asyncio.get_running_loop().call_later(0.03, seen.append, 1)
        await until(lambda: seen, timeout=2)
        with pytest.raises(AssertionError, match="not reached"):
            await until(lambda: False, timeout=0.05)

    asyncio.run(go())


def test_scripted_checks_answer_down_for_the_addresses_the_test_names():
    checks = ScriptedChecks(("greeting 421 busy", "greeting"))
    checks.down.add("198.51.100.20")

    async def go():
        return [await checks(None, a, 25, None) for a in REALSERVERS]

    down, up = asyncio.run(go())
    assert (down.ok, down.reason, down.step) == (False, "smtp 198.51.100.20:25: greeting 421 busy", "greeting")
    assert up.ok and checks.calls == 2


def test_running_director_is_ready_in_the_block_and_stopped_after_it(tmp_path, running_director):
    from lvsmail.ipvs.fake import FakeIPVS

    path, kernel = cluster_file(tmp_path), FakeIPVS()

    async def go():
        async with running_director(path, kernel) as d:
            assert d.ready.is_set() and len(kernel.table) == 1
            assert d.files.root == tmp_path / "state"
        return d

    d = asyncio.run(go())
    assert d.api is not None and not d.files.socket.exists()  # stopped: its API closed and its socket removed
    assert len(kernel.table) == 1  # and the table left in place, as a director leaves it


def test_running_director_stops_it_when_the_block_fails(tmp_path, running_director):
    stopped = []

    async def go():
        async with running_director(cluster_file(tmp_path)) as d:
            d.request_stop = lambda real=d.request_stop: (stopped.append(True), real())[1]
            raise RuntimeError("an assertion in the test")

    with pytest.raises(RuntimeError, match="an assertion in the test"):
        asyncio.run(go())
    assert stopped == [True]


def test_running_director_raises_the_error_of_a_bad_file(tmp_path, running_director):
    from lvsmail.config import ConfigError

    async def go():
        async with running_director(cluster_file(tmp_path, service(scheduler="wlcc"))):
            pass

    with pytest.raises(ConfigError, match="wlcc"):
        asyncio.run(go())
