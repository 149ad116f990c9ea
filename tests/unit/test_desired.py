"""From spec and health to the desired IPVS table: removal, quiescent, fallback."""

from lvsmail.config import parse_cluster
from lvsmail.ipvs.desired import desired_table, probe_services, service_entry, service_key
from lvsmail.ipvs.model import DestKey
from support.cluster import cluster_yaml, service

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


TWO = cluster_yaml(service("smtp", 25, forwarding="tun", quiescent=True, check={"type": "smtp", "via": "vip"}),
                   service("imap", 143, forwarding="tun"))
SMTP_A, SMTP_B = ("smtp", "198.51.100.20", 25), ("smtp", "198.51.100.32", 25)
IMAP_A = ("imap", "198.51.100.20", 143)


def test_only_builds_just_the_named_services():
    spec = parse_cluster(TWO)
    smtp, imap = (service_key(s) for s in spec.services)
    assert set(desired_table(spec, only={imap})) == {imap}
    assert set(desired_table(spec, only={smtp, imap})) == {smtp, imap}
    assert desired_table(spec, only=set()) == {}


def test_only_leaves_out_probe_services_it_does_not_name():
    spec = parse_cluster(TWO)
    probes = set(probe_services(spec))
    assert len(probes) == 2
    assert not probes & set(desired_table(spec, only={service_key(spec.services[0])}))
    assert probes <= set(desired_table(spec))


def test_each_service_built_alone_equals_its_entry_in_the_whole_table():
    spec = parse_cluster(TWO)
    health = {SMTP_A: False, IMAP_A: False}
    overrides = {SMTP_B: 7}
    whole = desired_table(spec, health, overrides)
    for svc in spec.services:
        key = service_key(svc)
        assert desired_table(spec, health, overrides, only={key}) == {key: whole[key]}
        assert service_entry(svc, health, overrides) == whole[key]


def dest_weights(table, svc_index, port):
    spec = parse_cluster(TWO)
    entry = table[service_key(spec.services[svc_index])]
    return {k.addr: d.settings.weight for k, d in entry.dests.items() if k.port == port}


def test_an_override_sets_the_weight_of_a_server_that_is_up():
    spec = parse_cluster(TWO)
    table = desired_table(spec, {SMTP_A: True}, {SMTP_A: 5, IMAP_A: 0})
    assert dest_weights(table, 0, 25) == {"198.51.100.20": 5, "198.51.100.32": 1}
    assert dest_weights(table, 1, 143) == {"198.51.100.20": 0, "198.51.100.32": 1}


def test_an_override_never_raises_a_down_server():
    spec = parse_cluster(TWO)
    down = {SMTP_A: False, IMAP_A: False}
    table = desired_table(spec, down, {SMTP_A: 5, IMAP_A: 5})
    # quiescent smtp keeps the down server at 0; imap has removed it, and the override does not add it back
    assert dest_weights(table, 0, 25) == {"198.51.100.20": 0, "198.51.100.32": 1}
    assert dest_weights(table, 1, 143) == {"198.51.100.32": 1}


def test_an_override_applies_without_health_verdicts():
    spec = parse_cluster(TWO)
    assert dest_weights(desired_table(spec, None, {SMTP_B: 9}), 0, 25) == {"198.51.100.20": 1, "198.51.100.32": 9}
