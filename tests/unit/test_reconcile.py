"""The reconciler against the in-memory kernel: idempotence, cache, races, ownership."""

import asyncio
import errno
import socket

import pytest

from lvsmail.director.reconcile import ReconcileError, Reconciler
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import (
    DelDest,
    DestEntry,
    DestKey,
    DestSettings,
    EditDest,
    ServiceEntry,
    ServiceKey,
    ServiceSettings,
    Timeouts,
)

SMTP = ServiceKey(socket.AF_INET, 6, "192.0.2.33", 25)
FOREIGN = ServiceKey(socket.AF_INET, 6, "203.0.113.9", 53)
RS1, RS2 = DestKey("198.51.100.20", 25), DestKey("198.51.100.32", 25)


def table(weight1=1, weight2=1):
    return {SMTP: ServiceEntry(ServiceSettings("wlc"), {RS1: DestEntry(DestSettings("tun", weight1)),
                                                         RS2: DestEntry(DestSettings("tun", weight2))})}


def run(coro):
    return asyncio.run(coro)


def test_second_sync_changes_nothing():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    assert len(run(r.sync(table())).applied) == 3
    again = run(r.sync(table(), refresh=True))
    assert again.applied == [] and not again.changed


def test_weight_change_reaches_kernel_without_a_dump():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(table()))
    dumps = kernel.dumps
    report = run(r.sync(table(weight1=0)))
    assert kernel.dumps == dumps and not report.dumped
    assert report.applied == [EditDest(SMTP, RS1, DestSettings("tun", 0))]
    assert kernel.table[SMTP].dests[RS1].settings.weight == 0


def test_drift_is_repaired_on_refresh():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(table()))
    kernel.table.clear()  # someone ran ipvsadm -C
    report = run(r.sync(table(), refresh=True))
    assert len(report.applied) == 3 and SMTP in kernel.table


def test_foreign_services_survive_sync_and_release():
    foreign = ServiceEntry(ServiceSettings("rr"), {RS1: DestEntry(DestSettings("nat", 1))})
    kernel = FakeIPVS({FOREIGN: foreign})
    r = Reconciler(kernel)
    run(r.sync(table(), refresh=True))
    run(r.release())
    assert set(kernel.table) == {FOREIGN}


def test_stale_cache_race_is_retried_after_a_reread():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(table()))
    del kernel.table[SMTP].dests[RS1]  # deleted behind our back
    report = run(r.sync(table(weight1=7)))  # our cache says edit; kernel says ENOENT
    assert report.attempts == 2 and report.dumped
    assert kernel.table[SMTP].dests[RS1].settings.weight == 7


def test_a_real_error_is_raised_with_the_operation():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    bad = {SMTP: ServiceEntry(ServiceSettings("nosuch"))}
    with pytest.raises(ReconcileError, match="add service TCP 192.0.2.33:25 nosuch"):
        run(r.sync(bad))
    assert r.known is None  # next sync reads the kernel again


def test_persistent_race_gives_up_after_bounded_attempts():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(table()))

    async def always_enoent(ops):
        return [errno.ENOENT for _ in ops]

    kernel.execute = always_enoent
    with pytest.raises(ReconcileError):
        run(r.sync(table(weight1=3)))


def test_removed_service_is_deleted_on_next_sync():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(table()))
    report = run(r.sync({}))
    assert kernel.table == {} and len(report.applied) == 1


def test_timeouts_set_only_when_different():
    kernel = FakeIPVS(timeouts=Timeouts(900, 120, 300))
    r = Reconciler(kernel)
    assert run(r.sync(table(), Timeouts(900, 0, 0))).timeouts_set is None
    assert run(r.sync(table(), Timeouts(3600, 0, 0))).timeouts_set == Timeouts(3600, 0, 0)
    assert kernel.timeouts == Timeouts(3600, 120, 300)


def test_delete_of_dest_already_gone_counts_as_done():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(table()))
    del kernel.table[SMTP].dests[RS2]
    one = {SMTP: ServiceEntry(ServiceSettings("wlc"), {RS1: DestEntry(DestSettings("tun", 1))})}
    report = run(r.sync(one))
    assert DelDest(SMTP, RS2) not in report.applied and report.attempts == 2


def test_scoped_sync_touches_only_the_named_service_and_reads_nothing():
    http = ServiceKey(socket.AF_INET, 6, "192.0.2.33", 80)
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    both = table()
    both[http] = ServiceEntry(ServiceSettings("wlc"), {RS1: DestEntry(DestSettings("tun", 1))})
    run(r.sync(both))
    kernel.table[http].dests.clear()  # drift elsewhere must not be noticed by a scoped sync
    dumps = kernel.dumps
    changed = table(weight2=0)
    changed[http] = both[http]
    report = run(r.sync(changed, only={SMTP}))
    assert kernel.dumps == dumps
    assert report.applied == [EditDest(SMTP, RS2, DestSettings("tun", 0))]
    assert kernel.table[http].dests == {}


def test_scoped_sync_race_falls_back_to_a_full_reread():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(table()))
    del kernel.table[SMTP].dests[RS2]
    report = run(r.sync(table(weight2=4), only={SMTP}))
    assert report.dumped and kernel.table[SMTP].dests[RS2].settings.weight == 4


HTTP = ServiceKey(socket.AF_INET, 6, "192.0.2.33", 80)


def two_services(weight1=1):
    both = table(weight1=weight1)
    both[HTTP] = ServiceEntry(ServiceSettings("wlc"), {RS1: DestEntry(DestSettings("tun", 1))})
    return both


RS3 = DestKey("198.51.100.44", 25)


def with_rs3(full: dict) -> dict:
    full[SMTP].dests[RS3] = DestEntry(DestSettings("tun", 1))
    return full


def test_a_race_in_a_scoped_sync_falls_back_to_the_full_table_and_keeps_the_other_owned_services():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(two_services(), refresh=True))
    scoped = {SMTP: with_rs3(table())[SMTP]}  # a health transition builds only its own service
    kernel.fail_next = {0: errno.EEXIST}  # the add of RS3 races with another tool's
    report = run(r.sync(scoped, only={SMTP}, full=lambda: with_rs3(two_services())))
    assert report.dumped  # the race made it re-read the kernel and sync the whole table
    assert set(kernel.table) == {SMTP, HTTP} and r.owned == {SMTP, HTTP}  # HTTP was not deleted
    assert set(kernel.table[SMTP].dests) == {RS1, RS2, RS3} and kernel.table[HTTP].dests
    assert set(r.known) == {SMTP, HTTP}


def test_a_scoped_sync_with_nothing_cached_syncs_the_full_table():
    kernel = FakeIPVS()
    r = Reconciler(kernel)
    run(r.sync(two_services(), refresh=True))
    r.known = None  # as after a refused operation: the next sync must read the kernel
    report = run(r.sync({SMTP: table(weight1=3)[SMTP]}, only={SMTP}, full=lambda: two_services(weight1=3)))
    assert report.dumped and set(kernel.table) == {SMTP, HTTP} and r.owned == {SMTP, HTTP}
    assert kernel.table[SMTP].dests[RS1].settings.weight == 3
