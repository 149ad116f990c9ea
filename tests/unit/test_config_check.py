"""``lvsmail config check``: validate, then the plan against the kernel (FakeIPVS), never applied."""

import asyncio
import json
import socket
from pathlib import Path

import pytest

import lvsmail.ipvs.netlink as netlink
from lvsmail.commands.config import config
from lvsmail.config import load_cluster
from lvsmail.director.table import kernel_plan
from lvsmail.ipvs.desired import desired_table
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import DestKey, ServiceKey

SEED = Path(__file__).resolve().parents[2] / "directors" / "examples" / "clustermail.yaml"
SMTP = ServiceKey(af=socket.AF_INET, protocol=socket.IPPROTO_TCP, addr="192.0.2.33", port=25)


@pytest.fixture
def kernel(monkeypatch):
    """The commands' NetlinkIPVS replaced by one FakeIPVS that outlives each command."""
    fake = FakeIPVS()
    monkeypatch.setattr(netlink, "NetlinkIPVS", lambda: fake)
    return fake


@pytest.fixture
def run(cli_runner):
    """``lvsmail config ARGS`` with its stdout and stderr apart."""
    return lambda *args: cli_runner.invoke(config, list(args))


def test_in_sync_exits_0(run, kernel, tmp_path):
    kernel.table = desired_table(load_cluster(SEED))
    result = run("check", str(SEED), "--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{SEED}: ok, 2 services, 4 real servers",
                                          "kernel: in sync, nothing to apply"]


def test_empty_kernel_shows_every_addition_and_applies_nothing(run, kernel, tmp_path):
    result = run("check", str(SEED), "--state-dir", str(tmp_path))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[1] == "kernel: 10 changes pending (not applied):"
    assert "  would add service TCP 192.0.2.33:25 wlc persistent 120" in lines
    assert "  would add dest TCP 192.0.2.33:80 -> 198.51.100.36:80 tun weight 1" in lines
    assert kernel.executed == [] and kernel.table == {}


def test_weight_drift_is_an_edit(run, kernel, tmp_path):
    kernel.table = desired_table(load_cluster(SEED))
    kernel.table[SMTP].dests[DestKey("198.51.100.20", 25)].settings = \
        kernel.table[SMTP].dests[DestKey("198.51.100.20", 25)].settings.__class__(forwarding="tun", weight=5)
    result = run("check", str(SEED), "--state-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[2:] == ["  would edit dest TCP 192.0.2.33:25 -> 198.51.100.20:25 tun weight 1"]


def test_owned_service_no_longer_in_the_file_would_be_deleted(run, kernel, tmp_path):
    spec = load_cluster(SEED)
    kernel.table = desired_table(spec)
    old = ServiceKey(af=socket.AF_INET, protocol=socket.IPPROTO_TCP, addr="192.0.2.33", port=143)
    other = ServiceKey(af=socket.AF_INET, protocol=socket.IPPROTO_TCP, addr="192.0.2.99", port=143)
    kernel.table[old] = kernel.table[SMTP].__class__(settings=kernel.table[SMTP].settings)
    kernel.table[other] = kernel.table[SMTP].__class__(settings=kernel.table[SMTP].settings)
    (tmp_path / "clustermail.owned.json").write_text(json.dumps(
        [{"af": socket.AF_INET, "protocol": 6, "addr": "192.0.2.33", "port": 143, "fwmark": 0}]))
    result = run("check", str(SEED), "--state-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[2:] == ["  would delete service TCP 192.0.2.33:143"]  # not the other tool's


def test_timeouts_differing_are_pending(run, kernel, tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(SEED.read_text().replace("# timeouts: {tcp: 900, tcpfin: 120, udp: 300}",
                                                "timeouts: {tcp: 600}"))
    kernel.table = desired_table(load_cluster(cluster))
    result = run("check", str(cluster), "--state-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[2:] == ["  would set timeouts tcp 600 tcpfin - udp -"]


def test_invalid_file_exits_2_before_reading_the_kernel(run, kernel, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: x\nservices:\n  - {name: smtp, vip: 192.0.2.33, port: 99999}\n")
    result = run("check", str(bad))
    assert result.exit_code == 2 and result.stdout == ""
    assert "services[0].port: must be between 1 and 65535, got 99999" in result.stderr
    assert kernel.dumps == 0


def test_no_ipvs_still_validates_and_says_so(run, monkeypatch, tmp_path):
    class NoIPVS:
        async def dump(self, counters=False):
            raise netlink.IPVSUnavailable("this kernel has no IPVS")

        async def close(self):
            pass

    monkeypatch.setattr(netlink, "NetlinkIPVS", NoIPVS)
    result = run("check", str(SEED), "--state-dir", str(tmp_path))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"{SEED}: ok, 2 services, 4 real servers",
                                          "kernel: no IPVS here, so no plan; the file itself is valid"]
    assert "kernel: not compared: this kernel has no IPVS" in result.stderr


def test_kernel_plan_is_the_reconcilers_plan():
    spec = load_cluster(SEED)
    fake = FakeIPVS()
    kplan = asyncio.run(kernel_plan(fake, spec))
    assert asyncio.run(fake.execute(list(kplan.ops))) == [0] * len(kplan.ops)
    assert asyncio.run(kernel_plan(fake, spec)).in_sync


def test_apply_dry_run_and_config_check_show_the_same_plan(cli_runner, kernel, tmp_path):
    """One plan: with nothing owned, ``director apply --dry-run`` prints what ``config check`` prints,
    timeouts included (what ``apply`` itself sets)."""
    from lvsmail.commands.director import director

    cluster = tmp_path / "c.yaml"
    cluster.write_text(SEED.read_text().replace("# timeouts: {tcp: 900, tcpfin: 120, udp: 300}",
                                                "timeouts: {tcp: 600}"))
    kernel.table = desired_table(load_cluster(cluster))
    kernel.table.pop(SMTP)
    kernel.table[next(iter(kernel.table))].dests.clear()
    check = cli_runner.invoke(config, ["check", str(cluster), "--state-dir", str(tmp_path / "state")])
    dry = cli_runner.invoke(director, ["apply", "--dry-run", "-c", str(cluster)])
    assert (check.exit_code, dry.exit_code) == (1, 1)
    planned = [line.strip() for line in check.stdout.splitlines()[2:]]
    assert planned == dry.stdout.splitlines()
    assert "would set timeouts tcp 600 tcpfin - udp -" in planned
    assert any(line.startswith("would add service TCP 192.0.2.33:25") for line in planned)
    assert kernel.executed == []


def test_after_apply_the_dry_run_is_in_sync_timeouts_included(cli_runner, kernel, tmp_path):
    from lvsmail.commands.director import director

    cluster = tmp_path / "c.yaml"
    cluster.write_text(SEED.read_text().replace("# timeouts: {tcp: 900, tcpfin: 120, udp: 300}",
                                                "timeouts: {tcp: 600}"))
    done = cli_runner.invoke(director, ["apply", "-c", str(cluster)])
    assert done.exit_code == 0 and kernel.timeouts.tcp == 600
    again = cli_runner.invoke(director, ["apply", "--dry-run", "-c", str(cluster)])
    assert (again.exit_code, again.stdout) == (0, "in sync: nothing to do\n")
