"""The lab's director stacks: the registry, the state file's stack, and how the chaos run treats a stack
(n/a faults reported with their reason, the VIP condition without failback, the stack's split rule)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lvsmail.lab import stacks
from lvsmail.lab.chaos.run import ChaosRun, not_applicable_fields
from lvsmail.lab.chaos.schedule import FaultSpec
from lvsmail.lab.cluster_up import LabUpError, MailCluster
from lvsmail.lab.stacks.base import DirectorStack


def test_registry_offers_lvsmail_first_and_builds_it():
    assert stacks.names()[0] == "lvsmail" == stacks.DEFAULT
    stack = stacks.get("lvsmail")
    assert isinstance(stack, DirectorStack) and stack.name == "lvsmail"
    assert set(stacks.STACKS) == set(stacks.names())
    assert all(issubclass(cls, DirectorStack) and cls.name == name for name, cls in stacks.STACKS.items())


def test_unknown_stack_is_refused_with_the_known_names(tmp_path):
    with pytest.raises(ValueError, match="unknown director stack 'heartbeat2'; known: lvsmail"):
        stacks.get("heartbeat2")
    with pytest.raises(LabUpError, match="known: lvsmail"):
        MailCluster("tun", 2, state_dir=tmp_path, stack="heartbeat2")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_every_registered_stack_names_a_split_rule_and_says_why_a_kind_is_na():
    from lvsmail.lab.chaos.schedule import KINDS

    for name in stacks.names():
        stack = stacks.get(name)
        assert stack.split_rule, name
        for kind in KINDS:
            reason = stack.not_applicable(kind)
            assert reason is None or (isinstance(reason, str) and reason.strip()), (name, kind)


def test_state_file_records_the_stack_and_load_restores_it(tmp_path):
    cluster = MailCluster("tun", 2, state_dir=tmp_path, prefix="unitstk")
    cluster.save()
    state = json.loads(cluster.state_path.read_text())
    assert state["stack"] == "lvsmail"
    assert MailCluster.load(cluster.state_path).stack.name == "lvsmail"
    # A state file from before the stacks existed is lvsmail's.
    del state["stack"]
    cluster.state_path.write_text(json.dumps(state))
    assert MailCluster.load(cluster.state_path).stack.name == "lvsmail"


def test_lvsmail_stack_writes_each_directors_cluster_file_with_its_priority(tmp_path):
    from lvsmail.config import parse_cluster

    cluster = MailCluster("tun", 2, state_dir=tmp_path, prefix="unitstk")
    cluster.work.mkdir(parents=True)
    cluster.weights["rs1"] = 3
    cluster.write_configs()
    for d, priority in zip(cluster.directors, (150, 100)):
        spec = parse_cluster(d.config.read_text())
        assert spec.failover.instances[0].priority == priority
        smtp = next(s for s in spec.services if s.name == "smtp")
        assert [r.weight for r in smtp.realservers] == [3, 1]


# -- the chaos run with a stack --------------------------------------------------------------------

class _Stack(DirectorStack):
    """A stack double: join_leave is n/a, no failback, heartbeat's split rule."""

    name, failback, split_rule = "double", False, "udp dport 694"

    def __init__(self) -> None:
        self.killed = []

    def not_applicable(self, kind):
        return "no registration API: real servers are listed statically" if kind == "join_leave" else None

    def kill(self, cluster, d):
        self.killed.append(d.number)

    def alive(self, cluster, d):
        return True


def _services(dests=()):
    """A director's table with every service of the lab, each with ``dests``."""
    from lvsmail.lab.cluster import ProcService
    from lvsmail.lab.cluster_up import SERVICES

    return {f"TCP 192.0.2.33:{port}": ProcService(f"TCP 192.0.2.33:{port}", "wlc", None, list(dests))
            for _, port, _ in SERVICES}


def _cluster(holders):
    directors = [SimpleNamespace(number=1, ns="d1"), SimpleNamespace(number=2, ns="d2")]
    topo = SimpleNamespace(reals=[], vip="192.0.2.33")
    stack = _Stack()
    full = _services()
    cluster = SimpleNamespace(
        topo=topo, directors=directors, reals=[], stack=stack, table=lambda d: full,
        director_alive=lambda d: stack.alive(None, d), kill_director=lambda d: stack.kill(None, d),
        vip_holders=lambda: [directors[i] for i in holders], vip_holder=lambda: directors[holders[0]])
    return cluster


def test_na_fault_is_recorded_with_its_reason_not_executed_and_not_dropped():
    said = []
    run = ChaosRun(_cluster([0]), say=said.append)
    spec = FaultSpec(1, "join_leave", "rs3", 0.0, 10.0)
    records = run.execute([spec], clients=None, held=None, start=0.0)
    assert records == []
    assert run.not_applicable == [(spec, "no registration API: real servers are listed statically")]
    assert any("join_leave is n/a for the double stack" in s for s in said)
    fields = not_applicable_fields("double", run.not_applicable)
    assert fields["stack"] == "double"
    assert fields["not_applicable"] == {"join_leave": "no registration API: real servers are listed statically"}
    assert fields["not_applicable_faults"][0]["index"] == 1 and fields["not_applicable_faults"][0]["target"] == "rs3"


@pytest.mark.parametrize("holders, whole", [
    ([1], True),          # without failback director 2 may keep the VIP
    ([0], True),
    ([0, 1], False),      # split brain: two holders
    ([], False),          # nobody
])
def test_without_failback_exactly_one_director_must_hold_the_vip(holders, whole):
    cluster = _cluster(holders)
    cluster.vip_holder = lambda: None
    unmet = ChaosRun(cluster).unmet()
    assert (unmet == []) is whole, unmet
    if not whole:
        assert "exactly one director" in unmet[-1]


def test_with_failback_director1_alone_must_hold_the_vip():
    cluster = _cluster([1])
    cluster.stack.failback = True
    assert "director1 alone after failback" in ChaosRun(cluster).unmet()[-1]


def test_director_kill_goes_through_the_stack_and_split_uses_its_rule(monkeypatch):
    from lvsmail.lab.chaos import run as run_module

    cluster = _cluster([0])
    rules = []
    monkeypatch.setattr(run_module, "_nft", lambda ns, *cmds: rules.append((ns, cmds[-1])))
    run = ChaosRun(cluster)
    rec = run_module.FaultRecord(FaultSpec(1, "director_kill", "master", 0.0, 10.0))
    run.inject(rec)
    assert cluster.stack.killed == [1] and rec.target == "director1"
    run.inject(run_module.FaultRecord(FaultSpec(2, "director_split", "master", 0.0, 10.0)))
    assert rules == [("d1", "add rule inet labsplit input udp dport 694 drop"),
                     ("d2", "add rule inet labsplit input udp dport 694 drop")]


# -- keepalived ------------------------------------------------------------------------------------

def _keepalived_cluster(tmp_path, mode="tun"):
    cluster = MailCluster(mode, 2, state_dir=tmp_path, prefix="unitka", stack="keepalived")
    cluster.work.mkdir(parents=True)
    cluster.weights["rs2"] = 3
    cluster.write_configs()
    return cluster


def test_keepalived_conf_carries_the_lab_pairs_vrrp_services_checks_and_sync(tmp_path):
    cluster = _keepalived_cluster(tmp_path)
    stack = cluster.stack
    for d, priority in zip(cluster.directors, (150, 100)):
        conf = stack.conf(d).read_text()
        # The same VRRP as lvsmail's lab pair: vrid 51, priorities 150/100, 1 s adverts, preemption on.
        assert "virtual_router_id 51" in conf and f"priority {priority}" in conf and "advert_int 1" in conf
        assert "nopreempt" not in conf and "interface eth0" in conf
        assert "lvs_sync_daemon eth1 mail id 7" in conf
        assert f'router_id "loadb{d.number}"' in conf
        blocks = {port: conf.split(f"virtual_server 192.0.2.33 {port} {{")[1].split("\n}")[0] for port in (25, 143, 80)}
        assert all("lb_algo wlc" in b and "lb_kind TUN" in b and "delay_loop 2" in b for b in blocks.values())
        assert "persistence_timeout 120" in blocks[25] and "persistence_timeout" not in blocks[143]
        assert blocks[25].count("SMTP_CHECK {") == 2 and blocks[143].count("TCP_CHECK {") == 2
        assert blocks[80].count("HTTP_GET {") == 2 and 'path "/solicitud.html"' in blocks[80]
        assert 'regex "test page"' in blocks[80] and "connect_timeout 10" in blocks[80]
        # The cluster's weights (a reload's change) reach the file.
        assert "real_server 198.51.100.32 25 {    ! rs2\n        weight 3" in blocks[25]
        warnings = (d.workdir / "keepalived.export-warnings").read_text()
        assert "registration" in warnings  # what keepalived cannot carry is said, not dropped


def test_keepalived_conf_reads_back_to_the_directors_services(tmp_path):
    from lvsmail.config import parse_cluster
    from lvsmail.interop.keepalived import import_keepalived

    cluster = _keepalived_cluster(tmp_path)
    d = cluster.directors[0]
    ours = parse_cluster(d.config.read_text())
    back = import_keepalived(cluster.stack.conf(d)).spec

    def services(spec):
        return {(s.vip, s.port): (s.scheduler, s.persistent, s.forwarding,
                                  sorted((r.address, r.port, r.weight) for r in s.realservers))
                for s in spec.services}

    assert services(back) == services(ours)


def test_keepalived_nat_pair_moves_the_real_servers_gateway_too(tmp_path):
    from lvsmail.lab.topology import NAT_GATEWAY

    cluster = _keepalived_cluster(tmp_path, mode="nat")
    conf = cluster.stack.conf(cluster.directors[1]).read_text()
    assert "virtual_router_id 52" in conf and f"{NAT_GATEWAY}/24" in conf and "lb_kind NAT" in conf


def test_keepalived_runs_in_the_foreground_with_the_directors_own_pid_files(tmp_path):
    cluster = _keepalived_cluster(tmp_path)
    one, two = (cluster.stack.argv(d) for d in cluster.directors)
    assert "--dont-fork" in one and "--use-file" in one
    for flag in ("--pid", "--vrrp_pid", "--checkers_pid", "--use-file"):
        assert one[one.index(flag) + 1] != two[two.index(flag) + 1]
        assert one[one.index(flag) + 1].startswith(str(cluster.directors[0].workdir))


def test_keepalived_says_join_leave_is_na_and_everything_else_applies():
    from lvsmail.lab.chaos.schedule import KINDS

    stack = stacks.get("keepalived")
    assert "registration" in stack.not_applicable("join_leave")
    assert [k for k in KINDS if stack.not_applicable(k)] == ["join_leave"]
    assert stack.failback is True and stack.split_rule == "ip protocol 112"


def test_keepalived_accepts_the_generated_file(tmp_path):
    """keepalived's own parser (``--config-test``) finds nothing wrong but the lab's interfaces, which
    exist only in the directors' namespaces."""
    import shutil

    from lvsmail.lab.stacks.keepalived import KEEPALIVED, config_test

    if not shutil.which(KEEPALIVED):
        pytest.skip("keepalived is not installed (deploy/setup installs it)")
    cluster = _keepalived_cluster(tmp_path)
    done = config_test(cluster.stack.conf(cluster.directors[0]))
    errors = [line for line in done.stderr.splitlines()
              if line.strip() and "doesn't exist" not in line and "Non-existent interface" not in line]
    assert errors == [], done.stderr


def test_without_a_standby_table_only_the_vip_holders_table_must_be_complete():
    from lvsmail.lab.cluster import ProcDest

    full = _services([ProcDest("198.51.100.20", 25, "Tunnel", 1, 0, 0)])
    empty = _services()
    cluster = _cluster([1])  # director 2 holds the VIP
    cluster.topo.reals = cluster.reals = [SimpleNamespace(role="rs1", address="198.51.100.20")]
    cluster.table = lambda d: full if d.number == 2 else empty
    # lvsmail and keepalived check on both directors: the standby's missing real server is a failure ...
    assert ChaosRun(cluster).unmet() == [f"director1 {key}: rs1 absent" for key in empty]
    # ... the seed's standby runs no ldirectord: only the holder's table counts.
    cluster.stack.table_on_standby = False
    assert ChaosRun(cluster).unmet() == []
    cluster.table = lambda d: empty
    assert ChaosRun(cluster).unmet() == [f"director2 {key}: rs1 absent" for key in empty]


def test_a_table_missing_a_service_is_not_whole():
    """A takeover whose table never came (the seed's ldirectord not started on the new holder) is not a
    recovery, even though no listed real server is missing from the services that are there."""
    cluster = _cluster([1])
    cluster.stack.table_on_standby = False
    cluster.table = lambda d: {}
    assert ChaosRun(cluster).unmet() == [f"director2 TCP 192.0.2.33:{port}: absent" for port in (25, 143, 80)]
    partial = _services()
    del partial["TCP 192.0.2.33:143"]
    cluster.table = lambda d: partial
    assert ChaosRun(cluster).unmet() == ["director2 TCP 192.0.2.33:143: absent"]


class _Clock:
    """time.time/monotonic/sleep for the chaos run, advanced only by sleep."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_recovery_counts_only_once_the_cluster_stays_whole(monkeypatch):
    """Whole for a moment, then a late takeover puts the VIP on both directors (heartbeat after a split
    brain): the recovery is the start of the final quiet period, not the first moment it looked whole."""
    from lvsmail.lab.chaos import run as run_module

    clock = _Clock()
    monkeypatch.setattr(run_module, "time", clock)
    run = ChaosRun(_cluster([0]))
    # whole from 1001 to 1003, two holders from 1003 to 1010, whole from then on
    run.unmet = lambda **_: [] if 1001 <= clock.now < 1003 or clock.now >= 1010 else ["VIP on director1, director2"]
    assert run.wait_whole("recovery", timeout=60, settle=5) == 1010.0
    clock.now = 1000.0
    assert run.wait_whole("recovery", timeout=60, settle=0) == 1001.0  # without settling: the moment


def test_a_cluster_never_whole_for_long_enough_times_out_saying_so(monkeypatch):
    from lvsmail.lab.chaos import run as run_module

    clock = _Clock()
    monkeypatch.setattr(run_module, "time", clock)
    run = ChaosRun(_cluster([0]))
    run.unmet = lambda **_: [] if int(clock.now) % 4 == 0 else ["VIP on no director"]  # flapping
    with pytest.raises(TimeoutError, match="waiting for recovery"):
        run.wait_whole("recovery", timeout=30, settle=5)
