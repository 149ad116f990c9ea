"""From spec and health to the desired IPVS table: removal, quiescent, fallback."""

from lvsmail.config import parse_cluster
from lvsmail.director.desired import desired_table, service_key
from lvsmail.ipvs.model import DestKey

CLUSTER = """\
cluster: t
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    forwarding: tun
    quiescent: {quiescent}
    fallback: 203.0.113.99:25
    realservers:
      - {{address: 198.51.100.20, weight: 3}}
      - 198.51.100.32
"""
A, B, FB = DestKey("198.51.100.20", 25), DestKey("198.51.100.32", 25), DestKey("203.0.113.99", 25)


def weights(quiescent: bool, health):
    spec = parse_cluster(CLUSTER.format(quiescent=str(quiescent).lower()))
    entry = desired_table(spec, health)[service_key(spec.services[0])]
    return {k: d.settings.weight for k, d in entry.dests.items()}


def test_without_health_every_server_is_in_at_its_weight():
    assert weights(False, None) == {A: 3, B: 1}


def test_down_server_leaves_the_service():
    assert weights(False, {("smtp", "198.51.100.20", 25): False}) == {B: 1}


def test_down_server_stays_at_weight_zero_when_quiescent():
    assert weights(True, {("smtp", "198.51.100.20", 25): False}) == {A: 0, B: 1}


def test_all_down_installs_the_fallback():
    down = {("smtp", "198.51.100.20", 25): False, ("smtp", "198.51.100.32", 25): False}
    assert weights(False, down) == {FB: 1}
    assert weights(True, down) == {A: 0, B: 0, FB: 1}


def test_recovery_restores_configured_weight_and_removes_fallback():
    assert weights(False, {("smtp", "198.51.100.20", 25): True, ("smtp", "198.51.100.32", 25): False}) == {A: 3}
