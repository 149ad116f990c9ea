"""Joined members: the merge into the cluster spec, persistence across restarts, drain as weight 0."""

import asyncio
import json
import logging

import pytest

from lvsmail.config import ConfigError, parse_cluster
from lvsmail.config.loader import dump_cluster
from lvsmail.ipvs.desired import desired_table, service_key
from lvsmail.ipvs.model import DestKey
from lvsmail.registration.director import Membership
from lvsmail.registration.members import JoinedMember, MemberStore, stranded, with_members
from lvsmail.registration.protocol import Member, ProtocolError, TokenError, member_key_file, parse_token

CLUSTER = """\
cluster: test
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    forwarding: tun
    realservers: [192.0.2.20]
  - name: imap
    vip: 192.0.2.33
    port: 143
    forwarding: nat
    realservers: [192.0.2.20]
registration:
  listen: 198.51.100.1:8730
  directors: [198.51.100.1:8730]
  token_file: /etc/lvsmail/registration.key
  allowed_networks: [192.0.2.0/24]
"""


@pytest.fixture
def spec():
    return parse_cluster(CLUSTER)


def test_members_become_real_servers_with_their_services_forwarding(spec):
    member = Member("192.0.2.21", ("smtp", "imap"), weight=3, ports=(("imap", 1143),), name="rs21")
    merged = with_members(spec, [JoinedMember(member)])
    smtp, imap = merged.services
    assert [(rs.address, rs.port, rs.forwarding, rs.weight, rs.name) for rs in smtp.realservers] == [
        ("192.0.2.20", 25, "tun", 1, None), ("192.0.2.21", 25, "tun", 3, "rs21")]
    assert [(rs.address, rs.port, rs.forwarding) for rs in imap.realservers][1] == ("192.0.2.21", 1143, "nat")
    assert spec.services[0].realservers == (spec.services[0].realservers[0],)  # the file's spec is untouched


def test_drained_member_has_weight_zero_in_the_desired_table(spec):
    merged = with_members(spec, [JoinedMember(Member("192.0.2.21", ("smtp",), weight=5), drained=True)])
    dests = desired_table(merged)[service_key(spec.services[0])].dests
    assert dests[DestKey("192.0.2.21", 25)].settings.weight == 0
    assert dests[DestKey("192.0.2.20", 25)].settings.weight == 1


def test_file_wins_over_a_member_it_lists_itself_after_a_reload(spec):
    merged = with_members(spec, [JoinedMember(Member("192.0.2.20", ("smtp",), weight=9))])
    assert [(rs.address, rs.weight) for rs in merged.services[0].realservers] == [("192.0.2.20", 1)]


def test_member_of_a_service_removed_from_the_file_is_left_out(spec):
    merged = with_members(spec, [JoinedMember(Member("192.0.2.21", ("pop3", "smtp")))])
    assert [rs.address for rs in merged.services[0].realservers] == ["192.0.2.20", "192.0.2.21"]
    assert [rs.address for rs in merged.services[1].realservers] == ["192.0.2.20"]


def test_member_of_the_other_family_is_left_out_once_the_file_adds_sync(spec):
    # An IPv6 member joined the IPv4 tun service while the file allowed it; a reload adds sync:, which the
    # kernel runs beside no such real server. The table leaves it out (the file wins) and says why.
    member = JoinedMember(Member("2001:db8::21", ("smtp",)))
    assert [rs.address for rs in with_members(spec, [member]).services[0].realservers] == ["192.0.2.20", "2001:db8::21"]
    assert stranded(spec, [member]) == []
    with_sync = parse_cluster(CLUSTER + "sync: {interface: eth0}\n")
    assert [rs.address for rs in with_members(with_sync, [member]).services[0].realservers] == ["192.0.2.20"]
    assert stranded(with_sync, [member]) == [
        "2001:db8::21 would be a real server of another address family in service 'smtp'; the cluster runs a "
        "connection sync daemon (sync:), which the kernel runs beside no such real server"]


def test_persistence_round_trip(tmp_path):
    path = tmp_path / "test.members.json"
    store = MemberStore(path)
    a = JoinedMember(Member("192.0.2.21", ("smtp",), weight=2, name="rs21"), drained=True, since=100.0)
    b = JoinedMember(Member("2001:db8::21", ("imap",), ports=(("imap", 1143),)), since=200.0)
    store.put(a)
    store.put(b)
    again = MemberStore(path)
    again.load()
    assert again.members == {"192.0.2.21": a, "2001:db8::21": b}
    again.remove("192.0.2.21")
    third = MemberStore(path)
    third.load()
    assert list(third.members) == ["2001:db8::21"]
    assert not list(tmp_path.glob("*.tmp"))


def test_unreadable_member_file_is_set_aside_not_overwritten(tmp_path):
    path = tmp_path / "test.members.json"
    path.write_text("{not json")
    store = MemberStore(path)
    store.load()
    assert store.members == {}
    aside = list(tmp_path.glob("test.members.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"


def test_failed_write_changes_nothing_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = MemberStore(blocker / "test.members.json")  # parent is a file: mkdir fails
    with pytest.raises(OSError):
        store.put(JoinedMember(Member("192.0.2.21", ("smtp",))))
    assert store.members == {}


def test_member_description_is_checked_before_any_traffic():
    with pytest.raises(ProtocolError, match="not an IP address"):
        Member("rs1.example.org", ("smtp",))
    with pytest.raises(ProtocolError, match="at least one service"):
        Member("192.0.2.21", ())
    with pytest.raises(ProtocolError, match="weight"):
        Member("192.0.2.21", ("smtp",), weight=70000)


def test_key_files_secret_and_member_key():
    secret = "s" * 40
    token = parse_token(f"# cluster\nsecret={secret}\n".encode())
    member_file = parse_token(member_key_file(secret.encode(), "192.0.2.21").encode())
    assert member_file.key_for("192.0.2.21") == token.key_for("192.0.2.21")
    with pytest.raises(TokenError, match="shorter than 32"):
        parse_token(b"secret=short\n")
    with pytest.raises(TokenError) as exc:
        parse_token(b"secret=abc\npassword=hunter2\n")
    assert "hunter2" not in str(exc.value)


def test_registration_section_round_trips_and_reports_every_problem(spec):
    assert parse_cluster(dump_cluster(spec)).registration == spec.registration
    pair = parse_cluster(CLUSTER.replace("listen: 198.51.100.1:8730",
                                         "listen: [198.51.100.1:8730, '[2001:db8::2]:8730']"))
    assert pair.registration.listen_addresses == (("198.51.100.1", 8730), ("2001:db8::2", 8730))
    assert parse_cluster(dump_cluster(pair)).registration == pair.registration
    bad = CLUSTER.replace("198.51.100.1:8730]", "198.51.100.1]").replace("192.0.2.0/24", "192.0.2.1/24")
    bad = bad.replace("  listen: 198.51.100.1:8730\n", "  listen: mail.example.org:8730\n")
    with pytest.raises(ConfigError) as exc:
        parse_cluster(bad)
    text = str(exc.value)
    assert "registration.listen" in text and "registration.directors[0]" in text
    assert "registration.allowed_networks[0]" in text and "host bits set" in text


def test_members_file_is_plain_json_an_operator_can_read(tmp_path):
    store = MemberStore(tmp_path / "m.json")
    store.put(JoinedMember(Member("192.0.2.21", ("smtp",)), since=5.0))
    data = json.loads((tmp_path / "m.json").read_text())
    assert data == {"members": [{"address": "192.0.2.21", "services": [{"name": "smtp"}], "weight": 1,
                                 "drained": False, "since": 5.0}]}


def test_a_reload_that_strands_a_member_says_so_and_keeps_it_stored(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="lvsmail.registration")
    file_spec = parse_cluster(CLUSTER.split("registration:")[0] + "sync: {interface: eth0}\n")  # no API to start
    membership = Membership(tmp_path / "m.json", lambda: file_spec, None, None)
    membership.store.put(JoinedMember(Member("2001:db8::21", ("smtp",))))
    asyncio.run(membership.configure(file_spec))
    assert [r.getMessage() for r in caplog.records] == [
        "registration: a joined member is left out of the table: 2001:db8::21 would be a real server of another "
        "address family in service 'smtp'; the cluster runs a connection sync daemon (sync:), which the kernel "
        "runs beside no such real server"]
    assert "2001:db8::21" in MemberStore(tmp_path / "m.json").path.read_text()  # stored, for a file that carries it
    assert [rs.address for rs in membership.merged(file_spec).services[0].realservers] == ["192.0.2.20"]
