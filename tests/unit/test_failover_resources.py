"""The director's failover: resource groups (order, reverse release, rollback) and instances on a fake link."""

import asyncio
import dataclasses
import json

import pytest

from lvsmail.config import parse_cluster
from lvsmail.failover.hooks import FailoverHooks, FailoverOptions, RoleChange
from lvsmail.failover.instances import Failover
from lvsmail.failover.resources import CommandResource, ResourceGroup, VipResource
from lvsmail.failover.runner import ANNOUNCE_HOLDOFF, Runner
from lvsmail.net.backend import FakeLink, FakeNetBackend
from lvsmail.statefiles import write_json
from lvsmail.vrrp.state import Role, VrrpState
from support import until
from support.cluster import cluster_yaml, service


class Step:
    """A resource that records what happens to it and can be told to fail."""

    def __init__(self, name, log, fail=False):
        self.name, self.log, self.fail = name, log, fail

    async def acquire(self):
        self.log.append(("acquire", self.name))
        if self.fail:
            raise OSError(1, "refused")

    async def release(self):
        self.log.append(("release", self.name))


def test_group_acquires_in_order_and_releases_in_reverse():
    log = []

    async def go():
        g = ResourceGroup([Step("vips", log), Step("sync", log), Step("cmds", log)], on_failure=log.append)
        g.want(True)
        await g.settled(2)
        assert [r.name for r in g.held] == ["vips", "sync", "cmds"]
        g.want(False)
        await g.settled(2)
        assert g.held == []
        await g.close()

    asyncio.run(go())
    assert log == [("acquire", "vips"), ("acquire", "sync"), ("acquire", "cmds"),
                   ("release", "cmds"), ("release", "sync"), ("release", "vips")]


def test_failed_step_rolls_back_what_was_taken_and_reports():
    log = []

    async def go():
        g = ResourceGroup([Step("vips", log), Step("sync", log, fail=True), Step("cmds", log)],
                          on_failure=lambda reason: log.append(("fault", reason)))
        g.want(True)
        await g.settled(2)
        assert g.held == []
        await g.close()

    asyncio.run(go())
    assert log == [("acquire", "vips"), ("acquire", "sync"), ("release", "vips"), ("fault", "sync: [Errno 1] refused")]


def test_on_backup_commands_all_run_even_after_a_failure(tmp_path):
    marker = tmp_path / "ran"

    async def go():
        c = CommandResource("i", on_master=(), on_backup=(("/bin/false",), ("/bin/touch", str(marker))))
        with pytest.raises(RuntimeError, match="exited with 1"):
            await c.release()

    asyncio.run(go())
    assert marker.exists()


class FakeWire:
    """A shared segment: an advert sent by one instance reaches every other attached one (TTL 255)."""

    def __init__(self):
        self.members = []
        self.cut = set()  # names whose adverts are lost (a split link)

    def transport(self, name):
        wire = self

        class T:
            def __init__(self, spec, primary, key):
                self.primary, self.instance, self.sent = primary, None, []

            def attach(self, instance):
                self.instance = instance
                wire.members.append(self)

            def send(self, adv):
                self.sent.append(adv.priority)
                if name in wire.cut:
                    return
                for m in wire.members:
                    if m is not self and m.instance is not None:
                        m.instance.received(self.primary, 255, adv)

            def close(self):
                wire.members.remove(self)

        return T


PAIR = """\
cluster: pair
vips: [192.0.2.33]
services: []
failover:
  interface: eth0
  instances:
    - name: mail
      vrid: 51
      priority: {priority}
      advert_interval: {advert}
      vips: [192.0.2.33/24]
      garp: {{count: 1}}
"""


HOOKS = {field.name for field in dataclasses.fields(FailoverHooks)}


def make(wire, name, address, priority, tmp_path, advert=0.05, text=PAIR, **given):
    """A failover on a fake link; ``given`` holds FailoverHooks fields and FailoverOptions fields."""
    spec = parse_cluster(text.format(advert=advert, priority=priority))
    net = FakeNetBackend({"eth0": FakeLink(True, [f"{address}/24"])})
    announced = []

    async def announcer(iface, addrs, count, interval):
        announced.append(addrs)

    state_file = tmp_path / f"{name}.failover.json"
    hooks = {"publish": lambda status: write_json(state_file, status)}
    hooks.update({k: v for k, v in given.items() if k in HOOKS})
    options = {"net": net, "transport_factory": wire.transport(name), "announcer": announcer, "track_interval": 0.02}
    options.update({k: v for k, v in given.items() if k not in HOOKS})
    f = Failover(spec.failover, spec, FailoverHooks(**hooks), FailoverOptions(**options))
    return f, net, announced


def role(f):
    return f.runners["mail"].instance.state.role


def test_pair_elects_higher_priority_moves_vip_and_hands_over_gracefully(tmp_path):
    wire = FakeWire()

    async def go():
        # Adverts every 0.2 s: b's master-down interval (3 x 0.2 s + skew 0.12 s) and its skew time alone
        # are far enough apart that a loaded machine cannot blur them.
        a, net_a, ann_a = make(wire, "a", "192.0.2.1", 200, tmp_path, advert=0.2)
        b, net_b, ann_b = make(wire, "b", "192.0.2.2", 100, tmp_path, advert=0.2)
        await a.start()
        await b.start()
        await until(lambda: role(a) is Role.MASTER and role(b) is Role.BACKUP)
        # The address comes first, its gratuitous ARP right after: wait for both (a loaded machine runs
        # the test between the two).
        await until(lambda: "192.0.2.33/24" in net_a.links["eth0"].addresses and ann_a)
        assert "192.0.2.33/24" not in net_b.links["eth0"].addresses and ann_a == [("192.0.2.33",)]
        state = json.loads((tmp_path / "a.failover.json").read_text())
        assert state["instances"][0]["role"] == "master" and state["instances"][0]["held"] == ["vips 192.0.2.33/24"]
        assert state["instances"][0]["adverts_dropped"] == {}  # the receive guard's counts: a clean link drops none
        # graceful stop: priority 0, so b takes over after the skew time, not 3 intervals
        t0 = asyncio.get_running_loop().time()
        await a.stop()
        assert "192.0.2.33/24" not in net_a.links["eth0"].addresses
        await until(lambda: role(b) is Role.MASTER, 2.0)
        assert asyncio.get_running_loop().time() - t0 < 0.5  # the skew time (0.12 s), not master-down (0.72 s)
        await until(lambda: "192.0.2.33/24" in net_b.links["eth0"].addresses)
        await b.stop()

    asyncio.run(go())


def test_a_takeover_is_measured_from_the_masters_last_advert_and_an_election_is_not(tmp_path):
    """The availability report needs the backup's takeover time; winning at start-up is no failover."""
    wire = FakeWire()
    taken: dict[str, list[tuple[str, float]]] = {"a": [], "b": []}

    async def go():
        a, _, _ = make(wire, "a", "192.0.2.1", 200, tmp_path, on_takeover=lambda w, s: taken["a"].append((w, s)))
        b, net_b, _ = make(wire, "b", "192.0.2.2", 100, tmp_path, on_takeover=lambda w, s: taken["b"].append((w, s)))
        await a.start()
        await b.start()
        await until(lambda: role(a) is Role.MASTER and role(b) is Role.BACKUP)
        await a.stop()  # priority 0: b takes over after its skew time
        await until(lambda: "192.0.2.33/24" in net_b.links["eth0"].addresses)
        await until(lambda: taken["b"], 1.0)
        await b.stop()

    asyncio.run(go())
    assert taken["a"] == []  # a won the election at start-up: nothing was down
    [(what, seconds)] = taken["b"]
    assert what == "mail vrid 51" and 0.0 <= seconds < 0.5


def test_link_down_faults_the_master_and_the_backup_takes_over(tmp_path):
    wire = FakeWire()

    async def go():
        a, net_a, _ = make(wire, "a", "192.0.2.1", 200, tmp_path)
        b, net_b, _ = make(wire, "b", "192.0.2.2", 100, tmp_path)
        await a.start()
        await b.start()
        await until(lambda: role(a) is Role.MASTER and role(b) is Role.BACKUP)
        net_a.links["eth0"].carrier = False
        await until(lambda: role(a) is Role.FAULT and role(b) is Role.MASTER)
        assert a.runners["mail"].instance.state.faults == ("interface eth0 down",)
        await until(lambda: "192.0.2.33/24" not in net_a.links["eth0"].addresses)
        net_a.links["eth0"].carrier = True  # a comes back and preempts (priority 200 > 100)
        await until(lambda: role(a) is Role.MASTER and role(b) is Role.BACKUP)
        await a.stop()
        await b.stop()

    asyncio.run(go())


def test_failed_acquire_puts_the_instance_in_fault_and_releases(tmp_path):
    wire = FakeWire()

    async def go():
        a, net_a, _ = make(wire, "a", "192.0.2.1", 200, tmp_path, resource_retry=60)
        # the VIP step works, the command step fails: the VIP must be taken back
        spec = a.spec.instances[0]
        from dataclasses import replace
        a.spec = replace(a.spec, instances=(replace(spec, on_master=(("/bin/false",),)),))
        await a.start()
        await until(lambda: role(a) is Role.FAULT)
        assert a.runners["mail"].instance.state.faults[0].startswith("commands of mail: /bin/false exited with 1")
        await until(lambda: net_a.links["eth0"].addresses == ["192.0.2.1/24"])
        assert 0 in a.runners["mail"].transport.sent  # gave way with priority 0
        await a.stop()

    asyncio.run(go())


def test_split_and_heal_gives_two_masters_then_one(tmp_path):
    wire = FakeWire()

    async def go():
        a, _, _ = make(wire, "a", "192.0.2.1", 100, tmp_path)
        b, _, _ = make(wire, "b", "192.0.2.2", 100, tmp_path)
        await a.start()
        await b.start()
        await until(lambda: {role(a), role(b)} == {Role.MASTER, Role.BACKUP})
        wire.cut = {"a", "b"}
        await until(lambda: role(a) is Role.MASTER and role(b) is Role.MASTER)
        wire.cut = set()
        await until(lambda: {role(a), role(b)} == {Role.MASTER, Role.BACKUP})
        assert role(b) is Role.MASTER  # equal priority: the higher address (RFC 5798 §6.4.3)
        await a.stop()
        await b.stop()

    asyncio.run(go())


def test_reload_retunes_priority_in_place_and_the_peer_preempts(tmp_path):
    wire = FakeWire()

    async def go():
        a, _, _ = make(wire, "a", "192.0.2.1", 200, tmp_path)
        b, _, _ = make(wire, "b", "192.0.2.2", 150, tmp_path)
        await a.start()
        await b.start()
        await until(lambda: role(a) is Role.MASTER and role(b) is Role.BACKUP)
        runner = a.runners["mail"]
        new = parse_cluster(PAIR.format(advert=0.05, priority=50))
        await a.update(new.failover, new)
        assert a.runners["mail"] is runner  # not restarted
        await until(lambda: role(b) is Role.MASTER and role(a) is Role.BACKUP)
        await a.stop()
        await b.stop()

    asyncio.run(go())


def test_vip_resource_owner_never_removes_its_own_address():
    net = FakeNetBackend({"eth0": FakeLink(True, ["192.0.2.33/24"])})
    spec = parse_cluster(PAIR.format(advert=0.05, priority=255)).failover.instances[0]

    async def quiet(*a):
        return None

    async def go():
        v = VipResource(net, spec, owner=True, announcer=quiet)
        await v.acquire()
        await v.release()

    asyncio.run(go())
    assert net.links["eth0"].addresses == ["192.0.2.33/24"]


def test_vips_are_announced_again_after_garp_refresh_unless_released_first():
    """keepalived's garp_master_delay: a peer that was master for a moment (a stalled director, a split brain
    healing) can announce after us; the second set puts the hosts' ARP entries back on our MAC address."""
    net = FakeNetBackend({"eth0": FakeLink(True, [])})
    base = parse_cluster(PAIR.format(advert=0.05, priority=200)).failover.instances[0]
    spec = dataclasses.replace(base, garp=dataclasses.replace(base.garp, refresh=0.2))
    sent = []

    async def announcer(iface, addrs, count, interval):
        sent.append((asyncio.get_running_loop().time(), iface, addrs))

    async def go():
        kept = VipResource(net, spec, announcer=announcer)
        await kept.acquire()
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(0.5)
        assert [(i, a) for _, i, a in sent] == [("eth0", ("192.0.2.33",))] * 2
        assert sent[1][0] - start >= 0.19  # the second set waited for the refresh
        sent.clear()
        released = VipResource(net, spec, announcer=announcer)
        await released.acquire()
        await asyncio.sleep(0.05)  # the first set goes out at once
        assert len(sent) == 1
        await released.release()  # gave way before the refresh: no late announcement of an address we dropped
        await asyncio.sleep(0.4)
        assert len(sent) == 1

    asyncio.run(go())


def test_director_runs_failover_publishes_state_and_hands_over_on_exit(tmp_path):
    """The Director loop with a failover: section, a fake link and a fake kernel (no root needed)."""
    from lvsmail.director.daemon import Director
    from lvsmail.ipvs.fake import FakeIPVS
    from lvsmail.net.sysctl import FakeSysctl

    wire = FakeWire()
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR.format(advert=0.05, priority=200))
    net = FakeNetBackend({"eth0": FakeLink(True, ["192.0.2.1/24"])})

    async def quiet(*args):
        return None

    async def go():
        peer, net_b, _ = make(wire, "b", "192.0.2.2", 100, tmp_path)
        await peer.start()
        await until(lambda: role(peer) is Role.MASTER)
        d = Director(str(path), FakeIPVS(), state_dir=str(tmp_path / "state"), sysctl=FakeSysctl(),
                     failover_options=FailoverOptions(net=net, transport_factory=wire.transport("a"),
                                                      announcer=quiet, track_interval=0.02))
        task = asyncio.create_task(d.run())
        await asyncio.wait_for(d.ready.wait(), 5)
        await until(lambda: role(d.failover) is Role.MASTER and role(peer) is Role.BACKUP)
        await until(lambda: "192.0.2.33/24" in net.links["eth0"].addresses)
        state = json.loads((tmp_path / "state" / "pair.failover.json").read_text())
        assert state["instances"][0]["role"] == "master" and state["instances"][0]["priority"] == 200
        # a reload lowering the priority below the peer's hands the VIP over, without restarting the instance
        runner = d.failover.runners["mail"]
        path.write_text(PAIR.format(advert=0.05, priority=50))
        d.request_reload()
        await until(lambda: role(peer) is Role.MASTER and role(d.failover) is Role.BACKUP)
        assert d.failover.runners["mail"] is runner
        path.write_text(PAIR.format(advert=0.05, priority=250))
        d.request_reload()
        await until(lambda: role(d.failover) is Role.MASTER)
        d.request_stop()
        await task
        assert net.links["eth0"].addresses == ["192.0.2.1/24"]  # released on exit
        await until(lambda: role(peer) is Role.MASTER, 1.0)  # priority 0 on exit: the peer takes over at once
        await peer.stop()

    asyncio.run(go())


def test_status_text_and_json_of_published_instances(tmp_path):
    import time as _time

    from lvsmail.console import status as fmt

    inst = {"name": "smtp", "vrid": 51, "interface": "eth0", "family": "inet", "vips": ["192.0.2.33/24"],
            "role": "fault", "priority": 90, "configured_priority": 150, "master": None,
            "since": _time.time() - 75, "transitions": 4, "faults": ["no real server of service smtp is up"],
            "advert_interval": 0.1, "preempt": True, "held": []}
    (tmp_path / "pair.failover.json").write_text(json.dumps({"cluster": "pair", "instances": [inst]}))
    (tmp_path / "other.failover.json").write_text("{not json")  # being replaced: skipped
    published = fmt.read_failover(str(tmp_path))
    text = fmt.failover_text(published)
    assert "smtp VRID 51 on eth0: FAULT for 75s, priority 90 (configured 150), master -, 4 transitions" in text
    assert "fault: no real server of service smtp is up" in text
    assert fmt.failover_json(published)[0]["cluster"] == "pair"
    assert fmt.read_failover(str(tmp_path), "nothere") == []


TWO = """\
cluster: two
vips: [192.0.2.33, 192.0.2.34]
services: []
failover:
  interface: eth0
  instances:
    - name: mail
      vrid: 51
      priority: 100
      vips: [192.0.2.33/24]
      track_interfaces: [{name: eth2, weight: 20}]
    - name: web
      vrid: 52
      priority: 100
      interface: eth1
      vips: [192.0.2.34/24]
      track_interfaces: [eth0]
"""


def test_link_fault_only_when_every_instance_lost_a_link_it_cannot_do_without(tmp_path):
    """What the health engine holds its failures on: read afresh (no waiting for the tracking poll),
    and only when this director serves no VIP because of its own links."""
    spec = parse_cluster(TWO)
    net = FakeNetBackend({name: FakeLink(True, [f"192.0.2.{i}/24"])
                          for i, name in enumerate(("eth0", "eth1", "eth2"), 1)})
    f = Failover(spec.failover, spec, options=FailoverOptions(
        net=net, transport_factory=FakeWire().transport("a"), announcer=lambda *a: None, track_interval=3600))

    async def go():
        await f.start()
        assert f.link_fault() is None
        net.links["eth2"].carrier = False  # weighted: lowers mail's priority, no fault
        await asyncio.sleep(0.06)
        assert f.link_fault() is None
        net.links["eth1"].carrier = False  # web is in fault, mail still serves
        await asyncio.sleep(0.06)
        assert f.link_fault() is None
        net.links["eth0"].carrier = False  # mail's own interface and web's tracked one
        await asyncio.sleep(0.06)
        assert f.link_fault() == "interface eth0 down; interface eth1 down; tracked interface eth0 down"
        net.links["eth0"].carrier = net.links["eth1"].carrier = True
        await asyncio.sleep(0.06)
        assert f.link_fault() is None
        await f.stop()

    asyncio.run(go())


def test_a_lower_priority_master_that_stays_gets_one_announcement_per_holdoff(tmp_path):
    """Split-brain heal asks for one re-announcement; a misconfigured peer asking every advert gets one per
    ANNOUNCE_HOLDOFF, not a gratuitous ARP and a log line each time."""
    now = [100.0]
    f, net, announced = make(FakeWire(), "a", "192.0.2.1", 200, tmp_path, clock=lambda: now[0])
    runner = Runner(f.spec.instances[0], f.context())
    runner.group.held.append(runner.vips)
    sent = []
    runner.vips.announce = lambda: sent.append(now[0])
    for t in (100.0, 101.0, 102.0, 100.0 + ANNOUNCE_HOLDOFF, 106.0):
        now[0] = t
        runner.announce("another master gives way")
    assert sent == [100.0, 100.0 + ANNOUNCE_HOLDOFF]
    assert runner.held_announcements == 1


def test_link_states_that_cannot_be_read_are_reported_once_not_per_failed_check(tmp_path, caplog):
    spec = parse_cluster(TWO)
    net = FakeNetBackend({name: FakeLink(True, [f"192.0.2.{i}/24"])
                          for i, name in enumerate(("eth0", "eth1", "eth2"), 1)})
    now = [100.0]

    class Broken:
        def link_states(self):
            raise OSError(105, "No buffer space available")

    f = Failover(spec.failover, spec, options=FailoverOptions(
        net=Broken(), transport_factory=FakeWire().transport("a"), announcer=lambda *a: None, track_interval=3600,
        clock=lambda: now[0]))
    for step in range(10):  # failed checks asking, some within LINK_FRESH of each other
        now[0] += 0.02 if step % 2 else 0.2
        assert f.link_fault() is None  # nothing known: no hold
    errors = [r for r in caplog.records if "cannot read link states" in r.getMessage()]
    assert len(errors) == 1 and "No buffer space available" in errors[0].getMessage()
    f.net = net
    now[0] += 1.0
    assert f.link_fault() is None
    assert "link states can be read again" in caplog.text


def test_a_stopped_failover_holds_no_check_and_reads_no_closed_socket(caplog):
    """The director stops failover first (the peer takes over at once) and its checks after: a check failing
    in between must neither be held nor make failover read the netlink socket it has just closed."""
    spec = parse_cluster(TWO)
    net = FakeNetBackend({name: FakeLink(False, [f"192.0.2.{i}/24"])
                          for i, name in enumerate(("eth0", "eth1", "eth2"), 1)})
    f = Failover(spec.failover, spec, options=FailoverOptions(
        net=net, transport_factory=FakeWire().transport("a"), announcer=lambda *a: None, track_interval=3600))

    def closed():
        raise OSError(9, "Bad file descriptor")

    async def go():
        await f.start()
        await asyncio.sleep(0.06)
        assert f.link_fault() == "interface eth0 down; interface eth1 down; tracked interface eth0 down"
        await f.stop()
        net.link_states = closed
        await asyncio.sleep(0.06)  # past LINK_FRESH: a running failover would read again
        assert f.link_fault() is None

    asyncio.run(go())
    assert "cannot read link states" not in caplog.text


# PAIR's instance tracking smtp, and a second one tracking imap with a weight, over two services.
TRACKED = cluster_yaml(service("smtp", 25), service("imap", 143), vips=("192.0.2.33", "192.0.2.34"),
                       extra=PAIR.split("services: []\n")[1].replace("garp: {{count: 1}}", "track_services: [smtp]")
                       + """\
    - name: web
      vrid: 52
      priority: {priority}
      advert_interval: {advert}
      vips: [192.0.2.34/24]
      track_services: [{{name: imap, weight: 30}}]
""")


class HealthView:
    """A health engine's ``service_up`` that counts who asked about which service."""

    def __init__(self):
        self.up = {"smtp": True, "imap": True}
        self.asked = []

    def service_up(self, name):
        self.asked.append(name)
        return self.up[name]


def test_services_changed_retracks_only_the_instances_tracking_them(tmp_path):
    health = HealthView()

    async def go():
        f, _, _ = make(FakeWire(), "a", "192.0.2.1", 100, tmp_path, text=TRACKED, service_up=health.service_up)
        await f.start()
        assert sorted(health.asked) == ["imap", "smtp"]  # each instance evaluated once, as it starts
        mail, web = f.runners["mail"], f.runners["web"]
        health.asked.clear()
        health.up["smtp"] = False
        f.services_changed({"smtp"})
        assert health.asked == ["smtp"]  # web tracks imap only: not evaluated again
        assert mail.last_track.faults == frozenset({"no real server of service smtp is up"})
        assert web.last_track.faults == frozenset() and web.last_track.penalty == 0
        await until(lambda: mail.instance.state.role is Role.FAULT)
        health.up["imap"] = False
        f.services_changed({"imap", "pop3"})
        assert health.asked == ["smtp", "imap"]
        assert web.last_track.penalty == 30 and mail.last_track.faults  # a weight lowers the priority only
        health.up["smtp"] = True
        f.services_changed({"smtp"})
        await until(lambda: mail.instance.state.role is not Role.FAULT)
        await f.stop()

    asyncio.run(go())


def test_no_service_is_looked_at_without_a_transition(tmp_path):
    """The link poll runs every track_interval; the health view is asked only when told something changed."""
    health = HealthView()

    async def go():
        f, net, _ = make(FakeWire(), "a", "192.0.2.1", 100, tmp_path, text=TRACKED, service_up=health.service_up,
                         track_interval=0.005)
        await f.start()
        started = len(health.asked)
        reads = [0]
        states = net.link_states

        def counted():
            reads[0] += 1
            return states()

        net.link_states = counted
        await until(lambda: reads[0] >= 20)  # twenty polls of the links
        assert len(health.asked) == started == 2
        await f.stop()

    asyncio.run(go())


def test_a_role_change_is_reported_once_per_edge(tmp_path):
    """Priority and master changes publish the status but are no role change; each edge is reported once."""
    changes, published = [], []
    f, _, _ = make(FakeWire(), "a", "192.0.2.1", 100, tmp_path, on_role=changes.append,
                   publish=published.append)
    runner = Runner(f.spec.instances[0], f.context())
    backup = VrrpState(role=Role.BACKUP, priority=100, master="192.0.2.2")
    for state in (backup, dataclasses.replace(backup, priority=80), dataclasses.replace(backup, master="192.0.2.3"),
                  VrrpState(role=Role.MASTER, priority=100, master="192.0.2.1"),
                  VrrpState(role=Role.MASTER, priority=90, master="192.0.2.1"), backup):
        runner.changed(state)
    assert changes == [RoleChange("mail", "backup", "init", "192.0.2.2"),
                       RoleChange("mail", "master", "backup", "192.0.2.1"),
                       RoleChange("mail", "backup", "master", "192.0.2.2")]
    assert len(published) == 6


def test_roles_and_peers_of_instances_running_or_not(tmp_path):
    """An instance that cannot start yet (its interface has no address) is ``init``; the peer shown is the
    master's address when we are not master."""
    wire = FakeWire()

    async def go():
        a, _, _ = make(wire, "a", "192.0.2.1", 200, tmp_path)
        b, net_b, _ = make(wire, "b", "192.0.2.2", 100, tmp_path)
        net_b.links["eth0"].addresses.clear()
        await b.start()
        assert b.roles() == {"mail": "init"}
        await a.start()
        await until(lambda: a.roles() == {"mail": "master"})
        net_b.links["eth0"].addresses.append("192.0.2.2/24")  # the poll starts it
        await until(lambda: b.roles() == {"mail": "backup"})
        await until(lambda: b.status(peers=True)["instances"][0]["peer"] == "192.0.2.1")  # heard a's advert
        assert "peer" not in b.status()["instances"][0]
        [inst] = a.status(peers=True)["instances"]
        assert inst["peer"] is None  # master, and no unicast peers configured
        await a.stop()
        await b.stop()

    asyncio.run(go())


def tracked_director(tmp_path, interval: float):
    """A running Director (a context manager) whose failover tracks smtp, its checks scripted, alone on its link."""
    from lvsmail.net.sysctl import FakeSysctl
    from support import ScriptedChecks
    from support.director import running

    failover = PAIR.split("services: []\n")[1].format(advert=0.05, priority=200)
    path = tmp_path / "tracked.yaml"
    path.write_text(cluster_yaml(
        service("smtp", 25, check={"type": "smtp", "interval": interval, "timeout": 0.5, "rise": 1, "fall": 1}),
        extra=failover.replace("garp: {count: 1}", "track_services: [smtp]")))
    checks = ScriptedChecks()

    async def quiet(*args):
        return None

    options = FailoverOptions(net=FakeNetBackend({"eth0": FakeLink(True, ["192.0.2.1/24"])}),
                              transport_factory=FakeWire().transport("a"), announcer=quiet, track_interval=0.02)
    return running(path, state_dir=tmp_path / "state", checker=checks, sysctl=FakeSysctl(),
                   failover_options=options), checks


def test_director_faults_the_instance_whose_tracked_service_lost_every_server_and_recovers(tmp_path):
    """The director tells its failover which services a batch of health transitions changed."""
    from support.cluster import REALSERVERS

    async def go():
        director, checks = tracked_director(tmp_path, 0.05)
        async with director as d:
            await until(lambda: role(d.failover) is Role.MASTER)  # alone on the link
            checks.down.update(REALSERVERS)
            await until(lambda: role(d.failover) is Role.FAULT)
            assert d.failover.runners["mail"].instance.state.faults == ("no real server of service smtp is up",)
            checks.down.clear()
            await until(lambda: role(d.failover) is Role.MASTER)

    asyncio.run(go())


def test_every_vrrp_edge_of_a_fast_flap_is_one_event(tmp_path):
    """The failover's role hook publishes each edge where it happens: a flap shorter than any poll shows both."""
    from support.cluster import REALSERVERS

    def edges(d):
        return [(e["previous"], e["role"]) for e in d.hub.last(100) if e["kind"] == "vrrp"]

    async def go():
        director, checks = tracked_director(tmp_path, 0.02)
        async with director as d:
            await until(lambda: role(d.failover) is Role.MASTER)  # alone on the link
            checks.down.update(REALSERVERS)
            await until(lambda: role(d.failover) is Role.FAULT, timeout=5, step=0.001)
            checks.down.clear()  # at once: the fault lasts a check interval or two
            await until(lambda: role(d.failover) is Role.MASTER)
            seen = edges(d)
            assert seen[0][0] == "init" and ("master", "fault") in seen and seen[-1][1] == "master"
            assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))  # a chain: no edge merged or lost
            [last] = [e for e in d.hub.last(100) if e["kind"] == "vrrp"][-1:]
            assert last["text"] == f"mail: {last['previous']} -> master" and last["instance"] == "mail"
            assert last["master"] is not None

    asyncio.run(go())
