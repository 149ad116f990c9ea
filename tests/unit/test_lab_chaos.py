"""The chaos run's pure parts: the seeded schedule and the Message-ID accounting of the report."""

from __future__ import annotations

import threading

import pytest

from lvsmail.lab.chaos.clients import Message, SessionEvent, greeting_name
from lvsmail.lab.chaos.report import build_report, sessions_per_second
from lvsmail.lab.chaos.run import FaultRecord
from lvsmail.lab.chaos.schedule import DIRECTOR_KINDS, GAP, KINDS, MAX_FAULTS, WARMUP, make_schedule

REALS = ["rs1", "rs2", "rs3", "rs4"]


def test_same_seed_same_schedule_other_seed_other_schedule():
    a = make_schedule(1, 300, REALS, "rs5")
    assert a == make_schedule(1, 300, REALS, "rs5")
    assert a != make_schedule(2, 300, REALS, "rs5")


def test_first_round_covers_every_kind_once_before_any_repeats():
    faults = make_schedule(7, 10_000, REALS, "rs5")
    first = [f.kind for f in faults[:len(KINDS)]]
    assert sorted(first) == sorted(KINDS)


def test_schedule_is_bounded_in_time_and_count():
    faults = make_schedule(3, 120, REALS, "rs5")
    assert faults and all(f.at + f.hold <= 120 for f in faults)
    assert faults[0].at == WARMUP
    for before, after in zip(faults, faults[1:]):
        assert after.at >= before.at + before.hold + GAP
    assert len(make_schedule(3, 10 ** 7, REALS, "rs5")) == MAX_FAULTS


def test_targets_fit_the_kind_and_join_leave_needs_a_spare():
    faults = make_schedule(5, 10_000, REALS, "rs5")
    for f in faults:
        if f.kind in DIRECTOR_KINDS:
            assert f.target == "master"
        elif f.kind == "join_leave":
            assert f.target == "rs5"
        else:
            assert f.target in REALS
    assert all(f.kind != "join_leave" for f in make_schedule(5, 10_000, REALS, None))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(1, 100, REALS, kinds=("nosuch",))
    with pytest.raises(ValueError, match="positive"):
        make_schedule(1, 0, REALS)


def test_greeting_name_is_the_last_word_of_the_banner():
    assert greeting_name("clustermail.example.org ESMTP rs3") == "rs3"
    assert greeting_name("") is None


class _Clients:
    """What build_report reads from MtaClients."""

    def __init__(self, messages, events):
        self.messages, self.events, self.lock = messages, events, threading.Lock()


class _Held:
    sessions: dict = {}
    failures: dict = {}


def _msg(mid, accepted=True, ambiguous=0):
    m = Message(mid=mid, rcpt="alice@example.org", source="203.0.113.10", created=0.0, attempts=1 + ambiguous,
                ambiguous=ambiguous)
    if accepted:
        m.accepted_at, m.accepted_by = 5.0, "rs1"
    return m


def _report(messages, found, events=(), records=()):
    return build_report(seed=1, duration=60, mode="tun", realservers=4, faults=[], records=list(records),
                        clients=_Clients(messages, list(events)), held=_Held(), found=found, start=0.0, end=60.0,
                        queues_left={}, unaccepted=0, setup_seconds=1.0)


def test_accounting_finds_a_lost_message_and_fails():
    r = _report([_msg("a"), _msg("b")], {"a": ["alice@example.org"]})
    assert r["messages"]["lost"] == ["b"] and r["ok"] is False


def test_a_duplicate_after_an_ambiguous_attempt_is_explained_and_passes():
    r = _report([_msg("a", ambiguous=1)], {"a": ["alice@example.org", "alice@example.org"]})
    assert r["messages"]["unexplained_duplicates"] == [] and r["ok"] is True
    assert "after the final dot" in r["messages"]["duplicates"][0]["explanation"]


def test_a_duplicate_without_an_ambiguous_attempt_fails():
    r = _report([_msg("a")], {"a": ["alice@example.org", "alice@example.org"]})
    assert r["messages"]["unexplained_duplicates"] == ["a"] and r["ok"] is False


def test_recovery_is_the_last_failed_session_start_after_the_fault():
    from lvsmail.lab.chaos.schedule import FaultSpec

    rec = FaultRecord(FaultSpec(1, "director_kill", "master", 8.0, 10.0), target="director1", injected=10.0,
                      healed=20.0, recovered=25.0)
    events = [SessionEvent("smtp", 9.0, 9.5, True, "rs1"), SessionEvent("smtp", 11.0, 31.0, False, None, "timeout"),
              SessionEvent("imap", 14.5, 15.0, False, None, "refused"), SessionEvent("smtp", 16.0, 16.5, True, "rs2")]
    r = _report([_msg("a")], {"a": ["alice@example.org"]}, events, [rec])
    fault = r["faults"][0]
    assert fault["recovery_s"] == 4.5 and fault["failed_sessions"] == {"smtp": 1, "imap": 1}
    assert r["availability"]["observed_mtfo_s"]["directors"] == [4.5]
    assert r["availability"]["seed_percent"] == 99.99608


def test_failures_in_the_final_drain_do_not_count_against_the_last_fault():
    from lvsmail.lab.chaos.schedule import FaultSpec

    rec = FaultRecord(FaultSpec(1, "director_split", "master", 8.0, 10.0), target="director1|director2",
                      injected=10.0, healed=20.0, recovered=25.0)
    # One failure during the fault, one while the senders drain their retries after the faults ended (60 s).
    events = [SessionEvent("smtp", 12.0, 13.0, False, None, "refused"),
              SessionEvent("smtp", 70.0, 80.0, False, None, "timeout")]
    fault = _report([_msg("a")], {"a": ["alice@example.org"]}, events, [rec])["faults"][0]
    assert fault["recovery_s"] == 2.0 and fault["failed_sessions"] == {"smtp": 1, "imap": 0}


def test_sessions_per_second_buckets_by_start():
    events = [SessionEvent("smtp", 0.2, 1.0, True, "rs1"), SessionEvent("imap", 1.5, 2.0, True, None),
              SessionEvent("smtp", 1.7, 2.0, False, None)]
    assert sessions_per_second(events, 0.0, 2.0) == {"smtp_ok": [1, 0, 0], "imap_ok": [0, 1, 0], "failed": [0, 1, 0]}
