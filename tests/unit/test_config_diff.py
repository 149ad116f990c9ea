"""``lvsmail config diff``: semantic differences between two cluster files, or a file and the kernel."""

import dataclasses
from pathlib import Path

import lvsmail.ipvs.netlink as netlink
from lvsmail.commands.config import config
from lvsmail.config import load_cluster
from lvsmail.config.diff import Change, diff_specs
from lvsmail.ipvs.desired import desired_table
from lvsmail.ipvs.fake import FakeIPVS

SEED = Path(__file__).resolve().parents[2] / "directors" / "examples" / "clustermail.yaml"


def seed():
    return load_cluster(SEED)


def with_service(spec, index, **changes):
    services = list(spec.services)
    services[index] = dataclasses.replace(services[index], **changes)
    return dataclasses.replace(spec, services=tuple(services))


def test_same_file_reordered_is_no_difference():
    spec = seed()
    reordered = dataclasses.replace(spec, services=tuple(
        dataclasses.replace(s, realservers=tuple(reversed(s.realservers))) for s in reversed(spec.services)))
    assert diff_specs(spec, reordered) == []


def test_service_settings_changed():
    new = with_service(seed(), 0, scheduler="rr", persistent=0, netmask="")
    assert diff_specs(seed(), new) == [
        Change("~", "service smtp", "scheduler wlc -> rr, persistent 120 -> 0, netmask 255.255.255.255 -> ")]


def test_real_servers_added_removed_and_changed():
    spec = seed()
    reals = list(spec.services[1].realservers)
    reals[0] = dataclasses.replace(reals[0], weight=0)
    removed = reals.pop()
    reals.append(dataclasses.replace(removed, address="198.51.100.40"))
    changes = diff_specs(spec, with_service(spec, 1, realservers=tuple(reals)))
    assert [str(c) for c in changes] == [
        "~ real server 198.51.100.20:80 of http: weight 1 -> 0",
        "+ real server 198.51.100.40:80 of http: weight 1, tun",
        "- real server 198.51.100.36:80 of http: weight 1, tun",
    ]


def test_check_settings_changed_added_removed():
    spec = seed()
    check = spec.services[0].check
    assert [str(c) for c in diff_specs(spec, with_service(spec, 0, check=dataclasses.replace(
        check, interval=5.0, fall=3)))] == ["~ check of smtp: interval 2 -> 5, fall 1 -> 3"]
    assert [str(c) for c in diff_specs(spec, with_service(spec, 0, check=None))] == [
        "- check of smtp: smtp every 2 s, timeout 10 s"]
    assert [str(c) for c in diff_specs(with_service(spec, 0, check=None), spec)] == [
        "+ check of smtp: smtp every 2 s, timeout 10 s"]


def test_services_added_removed_and_renamed():
    spec = seed()
    smtp, http = spec.services
    imap = dataclasses.replace(smtp, name="imap", port=143)
    new = dataclasses.replace(spec, services=(dataclasses.replace(smtp, name="mail"), imap))
    assert [str(c) for c in diff_specs(spec, new)] == [
        "~ service smtp: renamed to mail",
        "+ service imap: TCP 192.0.2.33:143, 4 real servers",
        "- service http: TCP 192.0.2.33:80",
    ]


def test_vips_and_sections():
    from lvsmail.spec import AvailabilityLayerSpec, AvailabilitySpec

    spec = seed()
    avail = AvailabilitySpec(0.999, 8640.0, (AvailabilityLayerSpec("directors", 2, "active-passive"),))
    new = dataclasses.replace(spec, vips=("192.0.2.33", "192.0.2.34"), availability=avail)
    assert [str(c) for c in diff_specs(spec, new)] == [
        "+ vip: 192.0.2.34", "- vip: 2001:db8::33", "+ section availability"]


# -- the command ---------------------------------------------------------------------------

def test_cli_two_files(cli_runner, tmp_path):
    other = tmp_path / "clustermail.yaml"
    other.write_text(SEED.read_text().replace("interval: 2                # seconds", "interval: 4  # seconds"))
    result = cli_runner.invoke(config, ["diff", str(SEED), str(other)])
    assert result.exit_code == 1
    assert result.stdout == "~ check of smtp: interval 2 -> 4\n"
    same = cli_runner.invoke(config, ["diff", str(SEED), str(SEED)])
    assert same.exit_code == 0 and same.stdout == f"no difference between {SEED} and {SEED}\n"


def test_cli_reports_problems_of_both_files(cli_runner, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("cluster: a\nservices: 3\n")
    b.write_text("cluster: b\n")
    result = cli_runner.invoke(config, ["diff", str(a), str(b)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"{a}:2: services: expected a list, got '3'",
                                          f"{b}:1: missing required key 'services'"]


def test_cli_one_file_against_the_kernel(cli_runner, monkeypatch, tmp_path):
    fake = FakeIPVS(desired_table(seed()))
    monkeypatch.setattr(netlink, "NetlinkIPVS", lambda: fake)
    result = cli_runner.invoke(config, ["diff", str(SEED), "--state-dir", str(tmp_path)])
    assert result.exit_code == 0 and result.stdout == "no difference: the kernel matches the file\n"
    fake.table.pop(next(iter(fake.table)))
    result = cli_runner.invoke(config, ["diff", str(SEED), "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "+ add service TCP 192.0.2.33:25 wlc persistent 120"
    assert fake.executed == []


def test_cli_one_file_without_ipvs_exits_2(cli_runner, monkeypatch, tmp_path):
    def unavailable():
        raise netlink.IPVSUnavailable("this kernel has no IPVS")

    monkeypatch.setattr(netlink, "NetlinkIPVS", unavailable)
    result = cli_runner.invoke(config, ["diff", str(SEED), "--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "cannot compare with the kernel" in result.stderr
