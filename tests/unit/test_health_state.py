"""The rise/fall state machine, one row per situation.

Each row: the check settings, a sequence of results (``+`` passed, ``-``
failed, one per second), the transitions expected (index of the deciding
result and the new state) and the state at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lvsmail.health import HealthState, Result, TransitionEvent, next_interval, step
from lvsmail.health.state import fast_interval
from lvsmail.spec import CheckSpec


@dataclass(frozen=True)
class Row:
    """One situation."""

    name: str
    start: str
    rise: int
    fall: int
    results: str
    transitions: tuple[tuple[int, str], ...]
    final: str
    pending: bool = False


ROWS = [
    Row("start up, fall 1: the first failure takes it down", "up", 1, 1, "-", ((0, "down"),), "down"),
    Row("start up: passing checks keep it up, no events", "up", 1, 1, "+++", (), "up"),
    Row("fall 2: one failure is not enough, transition pending", "up", 1, 2, "+-", (), "up", pending=True),
    Row("fall 2: two consecutive failures take it down", "up", 1, 2, "+--", ((2, "down"),), "down"),
    Row("fall 2: failures interrupted by a success do not add up", "up", 1, 2, "-+-+-", (), "up", pending=True),
    Row("fall 3 (ldirectord failurecount 3): third failure decides", "up", 1, 3, "---", ((2, "down"),), "down"),
    Row("start down: failures keep it down without events", "down", 1, 1, "---", (), "down"),
    Row("start down, rise 1: the first success brings it up", "down", 1, 1, "+", ((0, "up"),), "up"),
    Row("rise 3: two successes keep it down, transition pending", "down", 3, 1, "++", (), "down", pending=True),
    Row("rise 3: the third success brings it up", "down", 3, 1, "+++", ((2, "up"),), "up"),
    Row("rise 3: a failure resets the rise count", "down", 3, 1, "++-+++", ((5, "up"),), "up"),
    Row("outage and recovery with rise 2, fall 2", "up", 2, 2, "+--++", ((2, "down"), (4, "up")), "up"),
    Row("flapping server, rise 1 fall 1: flips on every check", "up", 1, 1, "-+-+",
        ((0, "down"), (1, "up"), (2, "down"), (3, "up")), "up"),
    Row("flapping server, rise 3 fall 2: alternating results never take it down", "up", 3, 2, "-+-+-+-+",
        (), "up"),
    Row("flapping server, rise 3 fall 2: once down it stays down while flapping", "up", 3, 2, "--+-+-++-",
        ((1, "down"),), "down"),
    Row("flapping server, rise 3 fall 2: three passes in a row bring it back", "up", 3, 2, "--+-+++",
        ((1, "down"), (6, "up")), "up"),
]


def _result(mark: str, i: int) -> Result:
    ok = mark == "+"
    return Result(ok, f"smtp 192.0.2.20:25: {'ok' if ok else f'greeting 421 busy #{i}'}", 0.01 * (i + 1),
                  "done" if ok else "greeting")


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_rise_and_fall(row: Row):
    spec = CheckSpec(type="smtp", start=row.start, rise=row.rise, fall=row.fall)
    state = HealthState.initial(spec, now=0.0)
    seen = []
    for i, mark in enumerate(row.results):
        before = state
        state, event = step(state, _result(mark, i), now=float(i + 1))
        if event is not None:
            seen.append((i, event.word))
            assert event.at == float(i + 1) and event.previous_since == before.since
            assert event.reason == _result(mark, i).reason
            assert event.streak == (row.rise if event.up else row.fall)
            assert state.since == float(i + 1)
        else:
            assert state.since == before.since
    assert tuple(seen) == row.transitions
    assert ("up" if state.up else "down") == row.final
    assert state.pending == row.pending
    assert state.checks == len(row.results)
    assert state.failed_checks == row.results.count("-")
    assert state.transitions == len(row.transitions)


def test_not_yet_checked_server_is_in_its_start_state():
    for start, up in (("up", True), ("down", False)):
        state = HealthState.initial(CheckSpec(type="imap", start=start), now=5.0)
        assert state.up is up and not state.checked and state.since == 5.0


def test_on_starts_up_and_off_starts_down_whatever_start_says():
    assert HealthState.initial(CheckSpec(type="on", start="down"), 0).up
    assert not HealthState.initial(CheckSpec(type="off", start="up"), 0).up


def test_bookkeeping_for_status():
    spec = CheckSpec(type="smtp", fall=2)
    state = HealthState.initial(spec, 0.0)
    state, _ = step(state, Result(False, "smtp 192.0.2.20:25: connect: connection refused", 0.002, "connect"), 1.0)
    state, _ = step(state, Result(True, "smtp 192.0.2.20:25: ok: greeting, EHLO, QUIT", 0.015, "done"), 2.0)
    assert state.up and state.checked
    assert state.last_latency == 0.015 and state.last_check == 2.0
    assert state.last_reason.endswith("ok: greeting, EHLO, QUIT")
    assert state.last_failure == "smtp 192.0.2.20:25: connect: connection refused"
    assert state.last_failure_at == 1.0  # kept after recovery, for "last failure" in status
    assert (state.successes, state.failures, state.checks, state.failed_checks) == (1, 0, 2, 1)


def test_step_does_not_change_the_state_it_is_given():
    state = HealthState.initial(CheckSpec(type="smtp"), 0.0)
    new, event = step(state, Result(False, "x", 0.1, "connect"), 1.0)
    assert state.up and state.checks == 0
    assert not new.up and isinstance(event, TransitionEvent)


def test_reload_with_new_thresholds_keeps_health():
    state = HealthState.initial(CheckSpec(type="smtp", fall=3), 0.0)
    state, _ = step(state, Result(False, "x", 0.1, "greeting"), 1.0)
    retuned = state.retuned(CheckSpec(type="smtp", fall=2, rise=4))
    assert retuned.up and retuned.failures == 1 and (retuned.rise, retuned.fall) == (4, 2)
    retuned, event = step(retuned, Result(False, "x", 0.1, "greeting"), 2.0)
    assert event is not None and not event.up


INTERVAL_ROWS = [
    # name, interval, start, results, expected next interval
    ("steady up server: the configured interval", 2.0, "up", "++", 2.0),
    ("up server with a first failure under fall 2: fast", 2.0, "up", "+-", 0.5),
    ("confirmed down server: back to the configured interval", 2.0, "up", "--", 2.0),
    ("down server with a first success under rise 3: fast", 2.0, "down", "+", 0.5),
    ("long interval: a quarter of it while pending", 10.0, "up", "-", 2.5),
    ("short interval: never slower than the interval itself", 0.3, "up", "-", 0.3),
]


@pytest.mark.parametrize("name, interval, start, results, expected", INTERVAL_ROWS, ids=[r[0] for r in INTERVAL_ROWS])
def test_faster_interval_while_a_transition_is_pending(name, interval, start, results, expected):
    spec = CheckSpec(type="smtp", interval=interval, start=start, rise=3, fall=2)
    state = HealthState.initial(spec, 0.0)
    for i, mark in enumerate(results):
        state, _ = step(state, _result(mark, i), float(i))
    assert next_interval(state, spec) == pytest.approx(expected)


def test_fast_interval_bounds():
    assert fast_interval(2.0) == 0.5 and fast_interval(1.0) == 0.5 and fast_interval(0.2) == 0.2
    assert fast_interval(60.0) == 15.0


def test_a_transition_says_when_its_deciding_streak_began():
    """The failover clock starts at the first failed check, not at the one that tipped ``fall``."""
    spec = CheckSpec(type="smtp", interval=2.0, fall=3, rise=2)
    state = HealthState.initial(spec, 0.0)
    state, _ = step(state, Result(True, "ok", 0.01, "done"), 1.0)
    events = []
    for now in (3.0, 3.5, 4.0):  # checked faster while the transition is pending
        state, event = step(state, Result(False, "connection refused", 0.25, "connect"), now)
        events.append(event)
    assert events[:2] == [None, None] and events[2].streak_began == pytest.approx(2.75)
    state, event = step(state, Result(True, "ok", 0.5, "done"), 9.0)
    state, event = step(state, Result(True, "ok", 0.5, "done"), 9.5)
    assert event.up and event.streak_began == pytest.approx(8.5)
