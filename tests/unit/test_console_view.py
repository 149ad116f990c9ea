"""The operator surface against a FakeView: the status snapshot, the API's requests and the metrics, no Director.

Everything the console knows of a director comes through its view
(lvsmail.console.view), so these tests build one from plain data: a cluster
spec, health states, a FakeIPVS table, and see what the console answers and
what it asks the director to do.
"""

import asyncio
import socket

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from lvsmail.config import parse_cluster  # noqa: E402
from lvsmail.console.api import APIError, APIServer  # noqa: E402
from lvsmail.console.events import EventHub  # noqa: E402
from lvsmail.console.fake import FakeView  # noqa: E402
from lvsmail.console.metrics import Exporter  # noqa: E402
from lvsmail.console.outages import REALSERVER_REMOVAL, OutageRecorder  # noqa: E402
from lvsmail.console.snapshot import snapshot  # noqa: E402
from lvsmail.health.result import Result  # noqa: E402
from lvsmail.health.state import HealthState  # noqa: E402
from lvsmail.ipvs.desired import desired_table  # noqa: E402
from lvsmail.ipvs.fake import FakeIPVS  # noqa: E402
from lvsmail.ipvs.model import ServiceKey  # noqa: E402
from lvsmail.statefiles import StateDir  # noqa: E402
from support.cluster import cluster_yaml, service  # noqa: E402

SMTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)
MX1 = ("smtp", "198.51.100.20", 25)
MX2 = ("smtp", "198.51.100.32", 25)


def fake_view(tmp_path) -> FakeView:
    """One checked SMTP service: mx1 (weight 3) up and in the kernel, 198.51.100.32 down and out of it."""
    spec = parse_cluster(cluster_yaml(service(quiescent=False, realservers=[
        {"address": "198.51.100.20", "weight": 3, "name": "mx1"}, "198.51.100.32"],
        check={"type": "smtp", "interval": 1, "timeout": 1})))
    health = {MX1: True, MX2: False}
    states = {MX1: HealthState(up=True, since=90.0, checks=4, last_latency=0.01),
              MX2: HealthState(up=False, since=95.0, checks=4, transitions=1, last_failure="greeting 421 busy",
                               last_failure_at=95.0)}
    return FakeView(state=StateDir.of(tmp_path / "state", "cluster.yaml"), config_path=tmp_path / "cluster.yaml",
                    cluster=spec, kernel=FakeIPVS(desired_table(spec, health)), states=states, now=100.0)


def rows_of(snap: dict) -> dict:
    return {(s["name"], r["address"], r["port"]): r for s in snap["services"] for r in s["realservers"]}


def test_the_snapshot_shows_health_and_the_kernels_weights_from_the_view_alone(tmp_path):
    view = fake_view(tmp_path)
    hub = EventHub(clock=lambda: 1.0)
    hub.publish("kernel", "add dest")

    snap = asyncio.run(snapshot(view, events=5, hub=hub))

    rows = rows_of(snap)
    assert snap["cluster"] == "test" and snap["config"] == str(tmp_path / "cluster.yaml")
    assert rows[MX1]["health"] == "up" and rows[MX1]["effective_weight"] == 3 and rows[MX1]["in_kernel"]
    assert rows[MX2]["health"] == "down" and not rows[MX2]["in_kernel"] and rows[MX2]["effective_weight"] is None
    assert rows[MX2]["last_failure"] == "greeting 421 busy" and rows[MX2]["transitions"] == 1
    assert snap["services"][0]["healthy"] == 1 and snap["services"][0]["in_kernel"]
    assert snap["failover"] is None and snap["sync"] is None and snap["kernel"] == {"sysctls": [], "ok": True}
    assert [e["text"] for e in snap["events"]] == ["add dest"]


def test_the_snapshot_carries_the_views_failover_and_sync_role(tmp_path):
    view = fake_view(tmp_path)
    view.failover_status = {"cluster": "test", "instances": [{"name": "VI_1", "role": "master", "peer": "192.0.2.2"}]}
    view.sync_status = {"role": "master", "configured_role": "auto", "interface": "eth0", "syncid": 7}

    snap = asyncio.run(snapshot(view, events=0))

    assert snap["failover"]["instances"][0]["peer"] == "192.0.2.2"
    assert snap["sync"] == {"role": view.sync_status, "daemons": [], "error": None}
    assert snap["events"] == []


def test_a_drain_through_the_api_saves_the_override_asks_the_view_to_apply_and_says_so(tmp_path):
    view = fake_view(tmp_path)
    api = APIServer(view, EventHub())

    reply = asyncio.run(api.handle({"request": "drain", "target": "mx1"}))

    assert view.applied == ["operator: drained"]
    assert view.overrides.get(MX1).mode == "drain" and view.overrides.get(MX1).weight == 0
    assert StateDir.of(tmp_path / "state", "cluster.yaml").overrides.exists()
    assert reply["changed"] == 1 and reply["servers"][0]["address"] == "198.51.100.20"
    assert [e["text"] for e in api.hub.last(5)] == ["smtp 198.51.100.20:25 drained"]


def test_status_reload_and_recheck_through_the_api_use_only_the_view(tmp_path):
    view = fake_view(tmp_path)
    view.results[MX2] = Result(False, "smtp 198.51.100.32:25: greeting 421 busy", latency=0.004)
    api = APIServer(view, EventHub())

    async def go():
        status = await api.handle({"request": "status", "table": True, "mine": True})
        reload = await api.handle({"request": "reload"})
        recheck = await api.handle({"request": "recheck", "target": "198.51.100.32"})
        with pytest.raises(APIError, match="has no health check"):
            await api.handle({"request": "recheck", "target": "mx1"})  # the fake has no result for mx1
        return status, reload, recheck

    status, reload, recheck = asyncio.run(go())
    assert rows_of(status["status"])[MX2]["health"] == "down"
    assert [s["key"] for s in status["table"]["json"]["services"]] == [str(SMTP)]
    assert "198.51.100.20:25" in status["table"]["text"]
    assert reload == {"requested": True} and view.reloads == 1
    assert recheck["results"] == [{"service": "smtp", "address": "198.51.100.32", "port": 25, "ok": False,
                                   "inconclusive": False, "reason": "smtp 198.51.100.32:25: greeting 421 busy",
                                   "latency": 0.004, "up": False}]
    assert view.applied == []  # neither status, reload nor recheck programs the kernel


def test_an_unknown_real_server_is_refused_and_changes_nothing(tmp_path):
    view = fake_view(tmp_path)
    api = APIServer(view, EventHub())

    with pytest.raises(LookupError, match="no real server mx9"):
        asyncio.run(api.handle({"request": "drain", "target": "mx9"}))
    assert view.applied == [] and view.overrides.items == {}


def test_a_scrape_reads_the_view_and_its_recorded_outages(tmp_path):
    view = fake_view(tmp_path)
    OutageRecorder(view.state.outages).record(REALSERVER_REMOVAL, 1.5, when=50.0, detail="smtp mx2")
    exporter = Exporter(view)

    async def go():
        exporter.configure(view.spec())  # no metrics: section, so no endpoint; the scrape runs on this loop
        return await asyncio.to_thread(lambda: generate_latest(exporter.registry).decode())

    fams = {f.name: f for f in text_string_to_metric_families(asyncio.run(go()))}
    up = {s.labels["address"]: s.value for s in fams["lvsmail_realserver_up"].samples}
    weight = {s.labels["address"]: s.value for s in fams["lvsmail_realserver_weight"].samples}
    removals = [s.value for s in fams["lvsmail_failover_duration_seconds"].samples
                if s.name == "lvsmail_failover_duration_seconds_count"]
    assert up == {"198.51.100.20": 1.0, "198.51.100.32": 0.0}
    assert weight == {"198.51.100.20": 3.0}
    assert removals == [1.0]


def test_the_live_view_answers_from_the_parts_it_was_given_never_a_director(tmp_path):
    """LiveView (the daemon's view) from stand-ins: each answer comes from the part named for it."""
    from types import SimpleNamespace

    from lvsmail.director.view import LiveView
    from lvsmail.net.sysctl import FakeSysctl

    fake = fake_view(tmp_path)
    asked: list[str] = []

    async def apply(why):
        asked.append(why)

    # Failover.status(peers=True) names each instance's peer (tested in test_failover_resources.py)
    failover = SimpleNamespace(status=lambda peers=False: {"cluster": "test", "instances": [
        {"name": "VI_1", "role": "master", "master": "192.0.2.1", "peer": "192.0.2.2, 192.0.2.3"},
        {"name": "VI_2", "role": "backup", "master": "192.0.2.9", "peer": "192.0.2.9"}]})
    engine = SimpleNamespace(clock=lambda: 42.0, states=fake.states)
    member = {"service": str(SMTP), "name": "smtp", "address": "198.51.100.32", "port": 25, "member_name": "mx2"}
    membership = SimpleNamespace(published=lambda spec: [dict(member, cluster=spec.name)])
    view = LiveView(state=fake.state, config_path=fake.config_path, overrides=fake.overrides,
                    spec=fake.spec, effective=fake.effective, membership=membership, engine=engine,
                    table=fake.kernel.dump, timeouts=fake.kernel.get_timeouts, daemons=fake.kernel.daemons,
                    apply=apply, failover=lambda: failover.status(peers=True),
                    sync_role=lambda: SimpleNamespace(status=lambda: {"role": "backup"}),
                    sysctl=FakeSysctl({"/proc/sys/net/ipv4/vs/conntrack": "0"}), request_reload=fake.request_reload)

    async def go():
        await view.apply("operator: drained")
        view.request_reload()
        return await snapshot(view, events=0)

    snap = asyncio.run(go())
    assert asked == ["operator: drained"] and fake.reloads == 1
    assert view.clock() == 42.0 and view.joined() == [dict(member, cluster="test")]
    assert rows_of(snap)[MX2]["member"] == "joined" and rows_of(snap)[MX2]["member_name"] == "mx2"
    assert view.sync_role() == {"role": "backup"}
    want, rows = view.kernel_profile()
    assert want == {} and rows and all(r.ok for r in rows)  # no kernel: section: nothing managed
    # the failover's status reaches the snapshot as the failover gave it
    assert [i["peer"] for i in snap["failover"]["instances"]] == ["192.0.2.2, 192.0.2.3", "192.0.2.9"]
    assert rows_of(snap)[MX1]["effective_weight"] == 3
