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
