"""The planner: fewest operations, stable order, only owned services touched."""

import socket

from lvsmail.ipvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DestEntry,
    DestKey,
    DestSettings,
    EditDest,
    EditService,
    ServiceEntry,
    ServiceKey,
    ServiceSettings,
)
from lvsmail.ipvs.plan import plan

SMTP = ServiceKey(socket.AF_INET, 6, "192.0.2.33", 25)
HTTP = ServiceKey(socket.AF_INET, 6, "192.0.2.33", 80)
FOREIGN = ServiceKey(socket.AF_INET, 6, "203.0.113.9", 53)
RS1, RS2, RS3 = DestKey("198.51.100.20", 25), DestKey("198.51.100.32", 25), DestKey("198.51.100.35", 25)


def svc(*dests, sched="wlc"):
    return ServiceEntry(ServiceSettings(sched), {k: DestEntry(DestSettings("tun", w)) for k, w in dests})


def test_empty_kernel_gets_services_then_dests():
    ops = plan({SMTP: svc((RS1, 1), (RS2, 1))}, {}, set())
    assert ops == [AddService(SMTP, ServiceSettings("wlc")),
                   AddDest(SMTP, RS1, DestSettings("tun", 1)), AddDest(SMTP, RS2, DestSettings("tun", 1))]


def test_matching_table_needs_nothing():
    table = {SMTP: svc((RS1, 1)), HTTP: svc((RS2, 2))}
    assert plan(table, {SMTP: svc((RS1, 1)), HTTP: svc((RS2, 2))}, set(table)) == []


def test_weight_change_is_one_edit_not_delete_and_add():
    ops = plan({SMTP: svc((RS1, 5))}, {SMTP: svc((RS1, 1))}, {SMTP})
    assert ops == [EditDest(SMTP, RS1, DestSettings("tun", 5))]


def test_scheduler_change_edits_the_service_in_place():
    ops = plan({SMTP: svc((RS1, 1), sched="rr")}, {SMTP: svc((RS1, 1))}, {SMTP})
    assert ops == [EditService(SMTP, ServiceSettings("rr"))]


def test_replacing_a_real_server_adds_before_it_deletes():
    ops = plan({SMTP: svc((RS3, 1))}, {SMTP: svc((RS1, 1))}, {SMTP})
    assert ops == [AddDest(SMTP, RS3, DestSettings("tun", 1)), DelDest(SMTP, RS1)]


def test_services_not_owned_are_never_touched():
    actual = {SMTP: svc((RS1, 1)), FOREIGN: svc((RS2, 1))}
    assert plan({SMTP: svc((RS1, 1))}, actual, {SMTP}) == []


def test_service_dropped_from_the_file_is_deleted_last():
    ops = plan({SMTP: svc((RS1, 1), (RS2, 1))}, {SMTP: svc((RS1, 1)), HTTP: svc((RS2, 1))}, {SMTP, HTTP})
    assert ops == [AddDest(SMTP, RS2, DestSettings("tun", 1)), DelService(HTTP)]


def test_owned_service_already_gone_is_not_deleted_again():
    assert plan({}, {}, {HTTP}) == []
