"""Checks through the VIP: probe services, marks, and what the engine asks the checker."""

import asyncio
import socket

import pytest

from lvsmail.config import ConfigError, parse_cluster
from lvsmail.health.engine import HealthEngine
from lvsmail.health.result import Result
from lvsmail.health.via_vip import prepare_kernel
from lvsmail.ipvs.desired import MARK_BASE, desired_table, probe_marks, probe_services
from lvsmail.ipvs.model import DestKey, ServiceKey
from lvsmail.net.sysctl import FakeSysctl

CLUSTER = """\
cluster: t
vips: [192.0.2.33]
services:
  - name: web
    vip: 192.0.2.33
    port: 80
    realservers: [198.51.100.20]
  - name: smtp
    vip: 192.0.2.33
    port: 25
    forwarding: {fwd}
    realservers: [198.51.100.20, 198.51.100.32]
    check: {{type: smtp, interval: 0.05, timeout: 0.5, via: vip}}
"""


def test_each_real_server_gets_its_own_mark_and_probe_service():
    spec = parse_cluster(CLUSTER.format(fwd="tun"))
    marks = probe_marks(spec)
    assert marks == {("smtp", "198.51.100.20", 25): MARK_BASE + 1, ("smtp", "198.51.100.32", 25): MARK_BASE + 2}
    probes = probe_services(spec)
    svc = probes[ServiceKey(socket.AF_INET, fwmark=MARK_BASE + 2)]
    assert list(svc.dests) == [DestKey("198.51.100.32", 25)]
    assert svc.dests[DestKey("198.51.100.32", 25)].settings.forwarding == "tun"


def test_probe_services_stay_at_weight_one_when_the_server_is_down():
    spec = parse_cluster(CLUSTER.format(fwd="dr"))
    table = desired_table(spec, {("smtp", "198.51.100.20", 25): False})
    assert DestKey("198.51.100.20", 25) not in table[ServiceKey(socket.AF_INET, 6, "192.0.2.33", 25)].dests
    probe = table[ServiceKey(socket.AF_INET, fwmark=MARK_BASE + 1)]
    assert probe.dests[DestKey("198.51.100.20", 25)].settings.weight == 1


@pytest.mark.parametrize("service, fragment", [
    ("  - name: f\n    fwmark: 5\n    forwarding: dr\n    realservers: [198.51.100.20]\n"
     "    check: {type: connect, via: vip}\n",
     "need an IPv4 VIP service"),
    ("  - name: s\n    vip: 192.0.2.33\n    port: 25\n    forwarding: nat\n    realservers: [198.51.100.20]\n"
     "    check: {type: smtp, via: vip}\n", "need dr or tun forwarding"),
])
def test_via_vip_is_refused_where_it_cannot_work(service, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_cluster("cluster: t\nvips: [192.0.2.33]\nservices:\n" + service)


def test_engine_probes_the_vip_with_the_mark_from_the_directors_address():
    calls = []

    async def checker(spec, address, port, creds, **kw):
        calls.append((address, port, kw.get("mark"), kw.get("source"), kw.get("peer")))
        return Result(True, "ok")

    async def go():
        engine = HealthEngine(parse_cluster(CLUSTER.format(fwd="dr")), lambda t, e: asyncio.sleep(0), checker=checker)
        engine.start()
        end = asyncio.get_running_loop().time() + 3
        while len({c[2] for c in calls}) < 2 and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.01)
        await engine.stop()

    asyncio.run(go())
    seen = {c[2]: c for c in calls}
    address, port, mark, source, peer = seen[MARK_BASE + 1]
    assert (address, port, mark) == ("192.0.2.33", 25, MARK_BASE + 1)
    assert peer == "198.51.100.20:25 via 192.0.2.33:25"
    assert source  # the director's own address on the path to the real server


def _kernel(all_rp="0", **interfaces):
    """A FakeSysctl with net.ipv4.conf as a kernel shows it: all, default, lo and the given interfaces."""
    values = {"net.ipv4.conf.all.accept_local": "0", "net.ipv4.conf.all.rp_filter": all_rp}
    for name, rp in {"default": "1", "lo": "1", **interfaces}.items():
        values[f"net.ipv4.conf.{name}.rp_filter"] = rp
    return FakeSysctl(values)


def test_prepare_kernel_turns_on_accept_local_through_the_backend():
    sysctl = _kernel(eth0="2", eth1="0")
    assert prepare_kernel(parse_cluster(CLUSTER.format(fwd="dr")), sysctl) == []
    assert sysctl.writes == [("net.ipv4.conf.all.accept_local", "1")]


def test_prepare_kernel_reports_strict_rp_filter_per_interface(caplog):
    sysctl = _kernel(eth0="1", eth1="2", **{"eth0/100": "1"})
    problems = prepare_kernel(parse_cluster(CLUSTER.format(fwd="dr")), sysctl)
    assert len(problems) == 1
    assert problems[0].startswith("strict rp_filter on eth0, eth0.100 drops replies")
    assert sysctl.values["net.ipv4.conf.all.accept_local"] == "1"
    assert "strict rp_filter on eth0, eth0.100" in caplog.text


def test_prepare_kernel_takes_the_larger_of_all_and_the_interface_as_the_kernel_does():
    # all=1 makes eth0 (0) strict; eth1 (2) stays loose: the kernel uses max(all, interface).
    problems = prepare_kernel(parse_cluster(CLUSTER.format(fwd="dr")), _kernel(all_rp="1", eth0="0", eth1="2"))
    assert [p.split(" drops")[0] for p in problems] == ["strict rp_filter on eth0"]


def test_prepare_kernel_reports_what_it_cannot_read_or_write():
    sysctl = FakeSysctl({"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.eth0.accept_local": "0"})
    problems = prepare_kernel(parse_cluster(CLUSTER.format(fwd="dr")), sysctl)
    assert problems == ["no sysctl net.ipv4.conf.all.accept_local",
                        "cannot read rp_filter: no sysctl net.ipv4.conf.eth0.rp_filter"]
    assert sysctl.writes == []


def test_prepare_kernel_touches_nothing_without_checks_through_the_vip():
    plain = CLUSTER.format(fwd="dr").replace(", via: vip", "")
    sysctl = _kernel(all_rp="1", eth0="1")
    before = dict(sysctl.values)
    assert prepare_kernel(parse_cluster(plain), sysctl) == []
    assert sysctl.writes == [] and sysctl.values == before
