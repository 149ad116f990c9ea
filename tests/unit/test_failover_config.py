"""The cluster file's failover: section: accepted shapes, defaults, and every mistake located."""

import pytest

from lvsmail.config import ConfigError, parse_cluster
from lvsmail.config.loader import dump_cluster
from lvsmail.spec import GarpSpec, TrackSpec

HEAD = "cluster: pair\nvips: [192.0.2.33]\nservices: []\n"

FULL = HEAD + """\
failover:
  interface: eth0
  instances:
    - name: mail-v4
      vrid: 51
      priority: 150
      advert_interval: 0.03
      preempt_delay: 5
      vips: [192.0.2.33/24, 192.0.2.34]
      unicast_peers: [198.51.100.2]
      auth_key_file: /etc/lvsmail/vrrp.key
      garp: {count: 5, interval: 0.5}
      track_interfaces: [eth1, {name: eth2, weight: 30}]
      track_services: [smtp]
      notify: {master: "/usr/local/bin/notify --verbose", fault: [/usr/local/bin/notify, "two words"]}
      on_master: ["/bin/systemctl start postfix"]
      on_backup: /bin/true
      sync: true
    - name: mail-v6
      vrid: 51
      interface: eth1
      vips: ["2001:db8::33/64"]
"""


def test_full_section_is_read_with_defaults_filled_in():
    spec = parse_cluster(FULL).failover
    v4, v6 = spec.instances
    assert spec.interface == "eth0"
    assert (v4.vrid, v4.priority, v4.advert_interval, v4.preempt, v4.preempt_delay) == (51, 150, 0.03, True, 5.0)
    assert v4.vips == ("192.0.2.33/24", "192.0.2.34/32") and v4.family == "inet"
    assert v4.garp == GarpSpec(5, 0.5) and v4.unicast_peers == ("198.51.100.2",)
    assert v4.track_interfaces == (TrackSpec("eth1"), TrackSpec("eth2", 30))
    assert v4.notify.master == ("/usr/local/bin/notify", "--verbose")
    assert v4.notify.fault == ("/usr/local/bin/notify", "two words")
    assert v4.on_master == (("/bin/systemctl", "start", "postfix"),) and v4.on_backup == (("/bin/true",),)
    assert v4.sync is True
    assert (v6.interface, v6.family, v6.priority, v6.advert_interval) == ("eth1", "inet6", 100, 1.0)


def test_dump_round_trips():
    spec = parse_cluster(FULL)
    assert parse_cluster(dump_cluster(spec)).failover == spec.failover


@pytest.mark.parametrize("body, line, message", [
    ("  instances:\n    - {name: a, vrid: 256, vips: [192.0.2.33]}\n", 7, "vrid: must be between 1 and 255"),
    ("  instances:\n    - {name: a, vrid: 1, priority: 0, vips: [192.0.2.33]}\n", 7, "priority: must be between 1"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33, '2001:db8::1']}\n", 7, "mixes IPv4 and IPv6"),
    ("  instances:\n    - {name: a, vrid: 1, advert_interval: 0.005, vips: [192.0.2.33]}\n", 7,
     "between 0.01 and 40.95"),
    ("  instances:\n    - {name: a, vrid: 1, advert_interval: 41, vips: [192.0.2.33]}\n", 7, "between 0.01 and 40.95"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33]}\n    - {name: b, vrid: 1, vips: [192.0.2.34]}\n",
     8, "VRID 1 is already used on eth0"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33]}\n    - {name: a, vrid: 2, vips: [192.0.2.34]}\n",
     8, "duplicate instance name 'a'"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33], auth_key_file: vrrp.key}\n", 7,
     "not an absolute path"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33], notify: {master: notify.sh}}\n", 7,
     "absolute path"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33], unicast_peers: ['2001:db8::2']}\n", 7,
     "not of the VIPs' address family"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33], preemt: false}\n", 7, "did you mean 'preempt'"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [224.0.0.18]}\n", 7, "not a unicast address"),
    ("  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33], password: x}\n", 7, "secrets do not belong"),
    ("  instances: []\n", 6, "needs at least one instance"),
])
def test_mistakes_are_located(body, line, message):
    text = HEAD + "failover:\n  interface: eth0\n" + body
    with pytest.raises(ConfigError) as err:
        parse_cluster(text, "pair.yaml")
    assert any(p.line == line and message in str(p) for p in err.value.problems), err.value


def test_instance_without_any_interface_is_an_error():
    with pytest.raises(ConfigError, match="no interface"):
        parse_cluster(HEAD + "failover:\n  instances:\n    - {name: a, vrid: 1, vips: [192.0.2.33]}\n")


def test_same_vrid_on_other_family_or_interface_is_fine():
    spec = parse_cluster(HEAD + "failover:\n  interface: eth0\n  instances:\n"
                         "    - {name: a, vrid: 1, vips: [192.0.2.33]}\n"
                         "    - {name: b, vrid: 1, vips: ['2001:db8::33']}\n"
                         "    - {name: c, vrid: 1, interface: eth1, vips: [192.0.2.34]}\n")
    assert len(spec.failover.instances) == 3
