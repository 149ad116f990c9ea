"""The kernel table against FakeIPVS: batched health transitions, scoped syncs, the race fallback, events, release."""

import asyncio
import errno
import socket

import pytest

import lvsmail.director.table as table_module
from lvsmail.config import parse_cluster
from lvsmail.director.table import DesiredSource, KernelPlan, KernelTable, TableHooks
from lvsmail.health.engine import targets
from lvsmail.health.state import TransitionEvent
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import DestKey, ServiceEntry, ServiceKey, ServiceSettings
from support.cluster import cluster_yaml, service

CLUSTER = parse_cluster(cluster_yaml(service(), service("submission", 587, realservers=["198.51.100.20"]),
                                     service("imap", 143), check={"type": "connect", "interval": 3600},
                                     name="batch"))
SMTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)
SUBMISSION = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 587)
IMAP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 143)
TARGETS = targets(CLUSTER)


class Rig:
    """A kernel table over a FakeIPVS, with the health it reads and every hook call recorded."""

    def __init__(self, owned=frozenset()):
        self.kernel = FakeIPVS()
        self.health: dict = {}
        self.weights: dict = {}
        self.events: list[tuple] = []
        self.owned_saves: list[set] = []
        self.removed: list[str] = []
        self.batches: list[set] = []
        self.alerts: list[tuple] = []
        self.spec = CLUSTER
        source = DesiredSource(spec=lambda: self.spec, health=lambda: self.health, overrides=lambda: self.weights)
        hooks = TableHooks(publish=lambda kind, text, **kw: self.events.append((kind, text)),
                           save_owned=self.owned_saves.append,
                           on_removed=lambda what, seconds: self.removed.append(what),
                           on_batch=self.batches.append,
                           alert=lambda key, up, reason: self.alerts.append((key, up)),
                           clock=lambda: 10.0)
        self.table = KernelTable(self.kernel, source, hooks, owned=owned)
        self.syncs: list = []  # each reconciler sync's ``only``
        self.hold: asyncio.Event | None = None
        inner = self.table.reconciler.sync

        async def counting(desired, *args, only=None, **kw):
            self.syncs.append(set(only) if only is not None else None)
            if self.hold is not None:
                await self.hold.wait()
            return await inner(desired, *args, only=only, **kw)

        self.table.reconciler.sync = counting

    def down(self, service_name: str, address: str, port: int = 25) -> None:
        """A server fails: the health the table reads says so, and the engine hands over the transition."""
        key = (service_name, address, port)
        self.health[key] = False
        self.table.transition(TARGETS[key], TransitionEvent(False, 9.0, "connect: refused", 1, 0.0, 7.5))

    def up(self, service_name: str, address: str, port: int = 25) -> None:
        """A server recovers."""
        key = (service_name, address, port)
        self.health[key] = True
        self.table.transition(TARGETS[key], TransitionEvent(True, 9.0, "ok", 1, 0.0, 8.0))


def test_transitions_decided_together_share_one_kernel_update():
    async def go():
        rig = Rig()
        await rig.table.sync("start")
        rig.down("smtp", "198.51.100.20")
        rig.down("smtp", "198.51.100.32")
        rig.down("submission", "198.51.100.20", 587)
        await rig.table.settled()
        return rig

    rig = asyncio.run(go())
    assert rig.syncs == [None, {SMTP, SUBMISSION}]
    assert not rig.kernel.table[SMTP].dests and not rig.kernel.table[SUBMISSION].dests
    assert rig.batches == [{"smtp", "submission"}]
    assert len(rig.removed) == 3 and rig.removed[0] == "198.51.100.20:25 connect: refused"
    assert rig.alerts == [(("smtp", "198.51.100.20", 25), False), (("smtp", "198.51.100.32", 25), False),
                          (("submission", "198.51.100.20", 587), False)]


def test_transitions_during_a_kernel_update_wait_for_the_next_one():
    async def go():
        rig = Rig()
        await rig.table.sync("start")
        rig.table.TRANSITION_BATCH = 0.0  # spacing aside: only the grouping is under test
        rig.hold = asyncio.Event()
        rig.down("smtp", "198.51.100.20")
        while len(rig.syncs) < 2:  # the first update has started and is held in the kernel
            await asyncio.sleep(0)
        rig.down("smtp", "198.51.100.32")
        rig.down("submission", "198.51.100.20", 587)
        rig.hold.set()
        await rig.table.settled()
        return rig

    rig = asyncio.run(go())
    assert rig.syncs == [None, {SMTP}, {SMTP, SUBMISSION}]
    assert not rig.kernel.table[SMTP].dests and not rig.kernel.table[SUBMISSION].dests
    assert rig.batches == [{"smtp"}, {"smtp", "submission"}]


def test_a_scoped_sync_builds_only_its_own_service(monkeypatch):
    built: list[set] = []
    real = table_module.desired_table

    def spy(*args, **kw):
        out = real(*args, **kw)
        built.append(set(out))
        return out

    async def go():
        rig = Rig()
        await rig.table.sync("start")
        built.clear()
        rig.down("smtp", "198.51.100.20")
        await rig.table.settled()
        transition = list(built)
        built.clear()
        await rig.table.sync("operator", only={IMAP}, refresh=False)
        return transition, list(built)

    monkeypatch.setattr(table_module, "desired_table", spy)
    transition, operator = asyncio.run(go())
    assert transition == [{SMTP}]
    assert operator == [{IMAP}]


def test_a_race_in_a_transition_batch_keeps_the_other_owned_services():
    async def go():
        rig = Rig()
        rig.health[("smtp", "198.51.100.20", 25)] = False
        await rig.table.sync("start")
        rig.kernel.fail_next = {0: errno.EEXIST}  # the add of the recovered server races with another tool's
        rig.up("smtp", "198.51.100.20")
        await rig.table.settled()
        return rig

    rig = asyncio.run(go())
    assert rig.kernel.dumps == 2  # start, then the re-read of the race fallback
    assert set(rig.kernel.table) == {SMTP, SUBMISSION, IMAP} and rig.table.owned == {SMTP, SUBMISSION, IMAP}
    assert DestKey("198.51.100.20", 25) in rig.kernel.table[SMTP].dests
    assert rig.kernel.table[IMAP].dests and rig.kernel.table[SUBMISSION].dests


def test_kernel_events_are_published_once_per_applied_operation_even_on_a_race():
    async def go():
        rig = Rig()
        rig.health[("smtp", "198.51.100.20", 25)] = False
        await rig.table.sync("start")
        rig.events.clear()
        rig.kernel.fail_next = {0: errno.EEXIST}
        rig.up("smtp", "198.51.100.20")
        await rig.table.settled()
        return rig

    rig = asyncio.run(go())
    assert rig.events == [("health", "smtp 198.51.100.20:25 up: ok"),
                          ("kernel", "add dest TCP 192.0.2.33:25 -> 198.51.100.20:25 dr weight 1")]


def test_a_transition_of_a_service_a_reload_removed_is_published_but_not_applied():
    async def go():
        rig = Rig()
        await rig.table.sync("start")
        rig.spec = parse_cluster(cluster_yaml(service("imap", 143), name="batch"))
        rig.down("smtp", "198.51.100.20")
        await rig.table.settled()
        return rig

    rig = asyncio.run(go())
    assert rig.events[-1] == ("health", "smtp 198.51.100.20:25 down: connect: refused")
    assert rig.syncs == [None] and rig.alerts == [] and rig.batches == []


def test_transition_is_synchronous():
    async def go():
        rig = Rig()
        await rig.table.sync("start")
        returned = rig.table.transition(TARGETS[("smtp", "198.51.100.20", 25)],
                                        TransitionEvent(False, 9.0, "refused", 1, 0.0, 7.5))
        await rig.table.settled()
        return returned

    assert asyncio.run(go()) is None


def test_full_sync_saves_ownership_and_release_deletes_only_owned_services():
    foreign = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "203.0.113.9", 53)

    async def go():
        rig = Rig()
        rig.kernel.table[foreign] = ServiceEntry(ServiceSettings("rr"))  # another tool's
        report = await rig.table.sync("start")
        assert rig.owned_saves == [{SMTP, SUBMISSION, IMAP}] and report.applied
        ops = await rig.table.release()
        return rig, ops

    rig, ops = asyncio.run(go())
    assert len(ops) == 3 and set(rig.kernel.table) == {foreign}
    assert rig.owned_saves[-1] == set() and rig.table.owned == frozenset()


def test_a_refused_sync_is_logged_and_returns_none(caplog):
    async def go():
        rig = Rig()
        rig.kernel.fail_next = {0: errno.EINVAL}
        return rig, await rig.table.sync("repair")

    rig, report = asyncio.run(go())
    assert report is None and rig.owned_saves == []
    assert "director: repair: kernel refused" in caplog.text


@pytest.mark.parametrize("drift, expected", [
    ("none", []),
    ("weight", ["edit dest TCP 192.0.2.33:25 -> 198.51.100.32:25 dr weight 1"]),
])
def test_pending_is_the_plan_with_health_applied(drift, expected):
    async def go():
        rig = Rig()
        rig.health[("smtp", "198.51.100.20", 25)] = False
        await rig.table.sync("start")
        if drift == "weight":
            dest = rig.kernel.table[SMTP].dests[DestKey("198.51.100.32", 25)]
            dest.settings = type(dest.settings)(forwarding="dr", weight=5)
        return await rig.table.pending()

    plan = asyncio.run(go())
    assert isinstance(plan, KernelPlan) and plan.lines() == expected


def test_dump_timeouts_and_daemons_read_the_kernel():
    async def go():
        rig = Rig()
        await rig.table.sync("start")
        return await rig.table.dump(counters=True), await rig.table.timeouts(), await rig.table.daemons()

    table, timeouts, daemons = asyncio.run(go())
    assert set(table) == {SMTP, SUBMISSION, IMAP} and timeouts.tcp == 900 and daemons == []
