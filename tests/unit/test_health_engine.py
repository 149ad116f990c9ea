"""The health engine with a scripted checker: scheduling, transitions, reload."""

import asyncio
import dataclasses
import os

import pytest

from lvsmail.config import parse_cluster
from lvsmail.health.engine import HealthEngine
from lvsmail.health.result import Result

CLUSTER = """\
cluster: t
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    realservers: [198.51.100.20, 198.51.100.32]
    check: {{type: smtp, interval: {interval}, timeout: 0.5, fall: {fall}{extra}}}
"""


def cluster(interval=0.05, fall=1, extra=""):
    return parse_cluster(CLUSTER.format(interval=interval, fall=fall, extra=extra))


class Script:
    """A checker whose verdict per address the test sets; counts calls."""

    def __init__(self):
        self.ok = {"198.51.100.20": True, "198.51.100.32": True}
        self.calls = {a: 0 for a in self.ok}
        self.hang = set()

    async def __call__(self, spec, address, port, creds, virtual=None):
        self.calls[address] += 1
        if address in self.hang:
            await asyncio.sleep(spec.timeout)
            return Result(False, f"smtp {address}:{port}: timeout after {spec.timeout} s waiting for greeting",
                          spec.timeout)
        ok = self.ok[address]
        return Result(ok, f"smtp {address}:{port}: {'ok' if ok else 'connect: connection refused'}", 0.001)


async def settle(cond, timeout=3.0):
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_failure_is_reported_once_and_recovery_too():
    script, seen = Script(), []

    async def on_transition(target, event):
        seen.append((target.address, event.word, event.reason))

    async def go():
        engine = HealthEngine(cluster(), on_transition, checker=script)
        engine.start()
        script.ok["198.51.100.20"] = False
        await settle(lambda: seen)
        assert engine.health()[("smtp", "198.51.100.20", 25)] is False
        assert engine.health()[("smtp", "198.51.100.32", 25)] is True
        script.ok["198.51.100.20"] = True
        await settle(lambda: len(seen) == 2)
        await engine.stop()

    asyncio.run(go())
    assert seen == [("198.51.100.20", "down", "smtp 198.51.100.20:25: connect: connection refused"),
                    ("198.51.100.20", "up", "smtp 198.51.100.20:25: ok")]


def test_a_hung_server_does_not_delay_the_others():
    script = Script()
    script.hang.add("198.51.100.20")

    async def go():
        engine = HealthEngine(cluster(interval=0.05), lambda t, e: asyncio.sleep(0), checker=script)
        engine.start()
        await asyncio.sleep(0.6)  # one hung check lasts 0.5 s
        await engine.stop()

    asyncio.run(go())
    # A check still hung at its next due time gets one fresh check beside it (never more), and the
    # next round starts when the first of them answers: four calls at most in 0.6 s, not one per 50 ms.
    assert script.calls["198.51.100.20"] <= 4
    assert script.calls["198.51.100.32"] >= 6  # kept its 50 ms schedule meanwhile


def test_reload_with_unchanged_check_keeps_state_and_does_not_flap():
    script, seen = Script(), []

    async def on_transition(target, event):
        seen.append(event.word)

    async def go():
        engine = HealthEngine(cluster(), on_transition, checker=script)
        engine.start()
        script.ok["198.51.100.20"] = False
        await settle(lambda: seen == ["down"])
        engine.update(cluster(fall=3))  # thresholds changed, probe unchanged: keep the verdict
        assert engine.health()[("smtp", "198.51.100.20", 25)] is False
        engine.update(cluster(fall=3))  # identical: nothing restarts
        await asyncio.sleep(0.2)
        assert engine.states[("smtp", "198.51.100.20", 25)].fall == 3
        await engine.stop()

    asyncio.run(go())
    assert seen == ["down"]


def test_reload_with_a_different_probe_starts_that_server_afresh():
    script = Script()

    async def go():
        engine = HealthEngine(cluster(), lambda t, e: asyncio.sleep(0), checker=script)
        engine.start()
        script.ok["198.51.100.20"] = False
        await settle(lambda: not engine.health()[("smtp", "198.51.100.20", 25)])
        engine.update(cluster(extra=", port: 2525"))
        assert engine.states[("smtp", "198.51.100.20", 25)].checks == 0  # new probe, fresh state (start: up)
        await engine.stop()

    asyncio.run(go())


def test_a_server_added_while_running_enters_with_its_first_good_check_not_before():
    script, seen = Script(), []
    script.ok["198.51.100.40"], script.calls["198.51.100.40"] = False, 0
    three = CLUSTER.replace("[198.51.100.20, 198.51.100.32]", "[198.51.100.20, 198.51.100.32, 198.51.100.40]")

    async def on_transition(target, event):
        seen.append((target.address, event.word))

    async def go():
        engine = HealthEngine(cluster(interval=0.05), on_transition, checker=script)
        assert all(engine.health().values())  # start: up applies to the director's own start
        engine.start()
        engine.update(parse_cluster(three.format(interval=0.05, fall=1, extra="")))  # a reload (or a join) adds it
        new = ("smtp", "198.51.100.40", 25)
        assert engine.health()[new] is False, "never checked: no traffic yet"
        assert engine.states[new].last_reason.startswith("new: down until its first good check")
        assert engine.health()[("smtp", "198.51.100.20", 25)] is True  # the others keep their verdict
        await settle(lambda: script.calls["198.51.100.40"] >= 2)
        assert engine.health()[new] is False and seen == []  # failing checks: it never entered, no flap
        script.ok["198.51.100.40"] = True
        await settle(lambda: engine.health()[new])
        await engine.stop()

    asyncio.run(go())
    assert seen == [("198.51.100.40", "up")]


def test_first_checks_are_spread_over_the_interval():
    starts = []

    async def checker(spec, address, port, creds, virtual=None):
        starts.append(asyncio.get_running_loop().time())
        return Result(True, "ok")

    big = "cluster: t\nservices:\n  - name: s\n    fwmark: 1\n    realservers: [" + ", ".join(
        f"198.51.100.{i}" for i in range(1, 101)) + "]\n    check: {type: connect, interval: 1.0}\n"

    async def go():
        engine = HealthEngine(parse_cluster(big), lambda t, e: asyncio.sleep(0), checker=checker)
        t0 = asyncio.get_running_loop().time()
        engine.start()
        await asyncio.sleep(0.99)
        await engine.stop()
        return t0

    t0 = asyncio.run(go())
    offsets = sorted(s - t0 for s in starts)
    assert len(offsets) >= 90
    halves = sum(1 for o in offsets if o < 0.5), sum(1 for o in offsets if o >= 0.5)
    assert min(halves) >= 25  # not all at once


def test_unusable_credentials_fail_the_check_without_probing(tmp_path):
    creds = tmp_path / "imap.cred"
    creds.write_text("user=probe\npassword=x\n")
    os.chmod(creds, 0o644)  # group/other readable: refused
    script, seen = Script(), []

    async def on_transition(target, event):
        seen.append(event.reason)

    text = CLUSTER.format(interval=0.05, fall=1, extra="") .replace(
        "check: {type: smtp", "check: {type: imap, port: 143, credentials: " + str(creds))
    text = text.replace("timeout: 0.5, fall: 1", "timeout: 0.5, fall: 1")

    async def go():
        engine = HealthEngine(parse_cluster(text), on_transition, checker=script)
        engine.start()
        await settle(lambda: len(seen) == 2)
        await engine.stop()

    asyncio.run(go())
    assert script.calls == {"198.51.100.20": 0, "198.51.100.32": 0}
    assert all("credentials" in r and str(creds) in r for r in seen)


def test_maintenance_file_forces_a_server_down_without_probing(tmp_path):
    maint = tmp_path / "maint"
    maint.mkdir()
    script, seen = Script(), []

    async def on_transition(target, event):
        seen.append((target.address, event.word, event.reason))

    text = CLUSTER.format(interval=0.05, fall=1, extra="").replace(
        "cluster: t\n", f"cluster: t\nmaintenance_dir: {maint}\n")

    async def go():
        engine = HealthEngine(parse_cluster(text), on_transition, checker=script)
        engine.start()
        (maint / "198.51.100.32:25").write_text("")
        await settle(lambda: seen)
        calls = script.calls["198.51.100.32"]
        await asyncio.sleep(0.2)
        assert script.calls["198.51.100.32"] == calls  # no probes while in maintenance
        (maint / "198.51.100.32:25").unlink()
        await settle(lambda: len(seen) == 2)
        await engine.stop()

    asyncio.run(go())
    assert seen[0][:2] == ("198.51.100.32", "down") and "in maintenance" in seen[0][2]
    assert seen[1][:2] == ("198.51.100.32", "up")


def test_maintenance_applies_to_services_without_a_check(tmp_path):
    maint = tmp_path / "maint"
    maint.mkdir()
    (maint / "198.51.100.20").write_text("")
    text = (f"cluster: t\nmaintenance_dir: {maint}\nservices:\n  - name: web\n    fwmark: 1\n"
            "    realservers: [198.51.100.20, 198.51.100.32]\n")
    seen = []

    async def on_transition(target, event):
        seen.append((target.address, event.word))

    async def go():
        engine = HealthEngine(parse_cluster(text), on_transition)
        engine.start()
        await settle(lambda: seen, timeout=5)
        await engine.stop()
        return engine.health()

    health = asyncio.run(go())
    assert seen == [("198.51.100.20", "down")]
    assert health == {("web", "198.51.100.20", 0): False, ("web", "198.51.100.32", 0): True}


def test_failures_are_not_counted_while_the_director_s_own_links_are_down(tmp_path):
    """A director whose links are down fails every check; with ``hold`` those failures leave its table
    alone (its peer holds the VIPs), a maintenance file still counts, and checks count again after."""
    maint = tmp_path / "maint"
    maint.mkdir()
    script, seen, own = Script(), [], {"fault": None}

    async def on_transition(target, event):
        seen.append((target.address, event.word))

    text = CLUSTER.format(interval=0.05, fall=1, extra="").replace(
        "cluster: t\n", f"cluster: t\nmaintenance_dir: {maint}\n")
    key = ("smtp", "198.51.100.20", 25)

    async def go():
        engine = HealthEngine(parse_cluster(text), on_transition, checker=script, hold=lambda: own["fault"])
        engine.start()
        own["fault"] = "interface eth0 down"
        script.ok["198.51.100.20"] = False
        calls = script.calls["198.51.100.20"]
        await settle(lambda: script.calls["198.51.100.20"] >= calls + 4)
        assert seen == [] and engine.health()[key] is True
        assert engine.states[key].last_reason.endswith("(not counted: interface eth0 down)")
        assert engine.states[key].inconclusive_checks >= 3
        (maint / "198.51.100.32:25").write_text("")  # the operator's word is not held
        await settle(lambda: seen == [("198.51.100.32", "down")])
        own["fault"] = None  # the link is back: the next failure counts
        await settle(lambda: ("198.51.100.20", "down") in seen)
        await engine.stop()

    asyncio.run(go())


def test_a_checker_that_raises_counts_as_a_failure_and_the_checks_go_on():
    calls, seen = [], []

    async def checker(spec, address, port, creds, virtual=None):
        calls.append(address)
        if address == "198.51.100.20":
            raise ValueError("bug in a checker")
        return Result(True, "ok")

    async def on_transition(target, event):
        seen.append((target.address, event.word, event.reason))

    async def go():
        engine = HealthEngine(cluster(interval=0.05), on_transition, checker=checker)
        engine.start()
        await settle(lambda: calls.count("198.51.100.20") >= 3)
        await engine.stop()

    asyncio.run(go())
    assert seen == [("198.51.100.20", "down",
                     "smtp 198.51.100.20:25: checker error: ValueError: bug in a checker")]


def test_checks_beyond_the_concurrency_bound_wait_their_turn():
    in_flight, most, done = [0], [0], []

    async def checker(spec, address, port, creds, virtual=None):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0.05)
        in_flight[0] -= 1
        done.append(address)
        return Result(True, "ok")

    many = "cluster: t\nservices:\n  - name: s\n    fwmark: 1\n    realservers: [" + ", ".join(
        f"198.51.100.{i}" for i in range(1, 21)) + "]\n    check: {type: connect, interval: 0.01}\n"

    async def go():
        engine = HealthEngine(parse_cluster(many), lambda t, e: asyncio.sleep(0), checker=checker, concurrency=3)
        engine.start()
        await settle(lambda: len(set(done)) == 20)  # every server is checked in turn
        await engine.stop()

    asyncio.run(go())
    assert most[0] == 3


def test_many_queued_checks_that_end_at_once_do_not_recurse():
    """Checks queued behind a full bound that end without waiting (here: a scripted verdict; in the
    director, a maintenance file) are started in a loop, not by nested calls."""
    gate, done = [None], []

    async def checker(spec, address, port, creds, virtual=None):
        if address == "198.51.0.1":  # the first due
            await gate[0]  # holds the only slot until released
        done.append(address)
        return Result(True, "ok")

    many = "cluster: t\nservices:\n  - name: s\n    fwmark: 1\n    realservers: [" + ", ".join(
        f"198.51.{i // 250}.{i % 250 + 1}" for i in range(2000)) + "]\n    check: {type: connect, interval: 0.5}\n"

    async def go():
        gate[0] = asyncio.get_running_loop().create_future()
        engine = HealthEngine(parse_cluster(many), lambda t, e: asyncio.sleep(0), checker=checker, concurrency=1)
        engine.rng.uniform = lambda a, b: 0.0  # everything due at once
        engine.start()
        await asyncio.sleep(0.05)
        queued = engine.queued()
        gate[0].set_result(None)
        await settle(lambda: len(set(done)) == 2000)
        await engine.stop()
        return queued

    assert asyncio.run(go()) >= 1500


def test_a_synchronous_on_transition_is_called_as_the_verdict_is_decided():
    """A plain function gets each transition at once, after the state it reports is recorded."""
    script, seen = Script(), []
    key = ("smtp", "198.51.100.20", 25)

    async def go():
        engine = HealthEngine(cluster(), lambda t, e: seen.append((t.key, e.word, engine.health()[t.key])),
                              checker=script)
        engine.start()
        script.ok["198.51.100.20"] = False
        await settle(lambda: seen)
        await engine.stop()

    asyncio.run(go())
    assert seen == [(key, "down", False)]


def test_a_transition_callback_that_raises_is_logged_and_the_checks_go_on(caplog):
    script, calls = Script(), []

    def on_transition(target, event):
        calls.append(event.word)
        raise RuntimeError("director bug")

    async def go():
        engine = HealthEngine(cluster(), on_transition, checker=script)
        engine.start()
        script.ok["198.51.100.20"] = False
        await settle(lambda: calls == ["down"])
        script.ok["198.51.100.20"] = True
        await settle(lambda: calls == ["down", "up"])
        await engine.stop()

    asyncio.run(go())
    assert "acting on down transition of ('smtp', '198.51.100.20', 25) failed" in caplog.text


def test_a_result_counted_after_stop_changes_the_state_but_calls_no_transition():
    """A worker's last batch can arrive while the engine stops: the director no longer acts on it."""
    script, seen = Script(), []
    key = ("smtp", "198.51.100.20", 25)

    async def go():
        engine = HealthEngine(cluster(), lambda t, e: seen.append(e.word), checker=script)
        engine.start()
        await settle(lambda: engine.states[key].checks >= 1)
        await engine.stop()
        engine.remote_result(key, Result(False, "smtp 198.51.100.20:25: connect: connection refused"))
        return engine.health()[key]

    assert asyncio.run(go()) is False
    assert seen == []

def test_on_result_given_to_the_constructor_sees_every_result():
    script, results = Script(), []

    async def go():
        engine = HealthEngine(cluster(), lambda t, e: None, checker=script,
                              on_result=lambda key, result: results.append((key, result.ok)))
        engine.start()
        await settle(lambda: len(results) >= 4)
        await engine.stop()
        return engine.checks_done

    done = asyncio.run(go())
    assert len(results) == done
    assert {key for key, _ok in results} == {("smtp", "198.51.100.20", 25), ("smtp", "198.51.100.32", 25)}


def test_service_up_is_any_server_up_and_none_when_nothing_is_checked():
    engine = HealthEngine(cluster(), lambda t, e: None, checker=Script())
    assert engine.service_up("smtp") is True  # start: up
    engine.states[("smtp", "198.51.100.20", 25)] = dataclasses.replace(
        engine.states[("smtp", "198.51.100.20", 25)], up=False)
    assert engine.service_up("smtp") is True  # one of two still up
    engine.states[("smtp", "198.51.100.32", 25)] = dataclasses.replace(
        engine.states[("smtp", "198.51.100.32", 25)], up=False)
    assert engine.service_up("smtp") is False
    assert engine.service_up("imap") is None  # no checked server: nothing says it is down


# -- a fresh check beside one still in flight at its due time --------------------------------------------

ONE = """\
cluster: t
services:
  - name: smtp
    fwmark: 1
    realservers: [{servers}]
    check: {{type: connect, interval: 0.1, timeout: 5, rise: {rise}, fall: 1, start: {start}}}
"""


class Flights:
    """A checker whose every call waits for the test's answer: one future per call, in call order."""

    def __init__(self):
        self.calls: list[tuple[str, asyncio.Future]] = []
        self.in_flight = 0
        self.most = 0

    async def __call__(self, spec, address, port, creds, virtual=None):
        fut = asyncio.get_running_loop().create_future()
        self.calls.append((address, fut))
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await fut
        finally:
            self.in_flight -= 1

    def answer(self, n, ok=True, inconclusive=False):
        address, fut = self.calls[n]
        word = "inconclusive" if inconclusive else "ok" if ok else "connect: connection refused"
        fut.set_result(Result(ok, f"connect {address}:0: {word} (call {n})", 0.001, inconclusive=inconclusive))


def flights_engine(checker, seen, *, servers="198.51.100.20", rise=1, start="up", concurrency=64):
    text = ONE.format(servers=servers, rise=rise, start=start)
    engine = HealthEngine(parse_cluster(text), lambda t, e: seen.append((t.address, e.word, e.reason)),
                          checker=checker, concurrency=concurrency)
    engine.rng.uniform = lambda a, b: 0.0  # the first check at once
    return engine


async def two_in_flight(checker, seen, **cluster):
    """A started engine once two checks are in flight (one server's stale and fresh, or two servers')."""
    engine = flights_engine(checker, seen, **cluster)
    engine.start()
    await settle(lambda: len(checker.calls) == 2)
    return engine


KEY = ("smtp", "198.51.100.20", 0)


def test_a_check_still_waiting_at_its_due_time_gets_a_fresh_one_beside_it():
    checker, seen = Flights(), []

    async def go():
        engine = await two_in_flight(checker, seen)
        both_waiting = not checker.calls[0][1].done() and not checker.calls[1][1].done()
        await engine.stop()
        return both_waiting, engine.states[KEY].checks

    both_waiting, checks = asyncio.run(go())
    assert both_waiting and checks == 0  # nothing counted yet: neither has answered


@pytest.mark.parametrize("answering, other", [(1, 0), (0, 1)], ids=["the fresh one answers first",
                                                                     "the stale one answers first"])
def test_the_first_answer_cancels_the_other_check_and_counts_once(answering, other):
    checker, seen = Flights(), []

    async def go():
        engine = await two_in_flight(checker, seen)
        checker.answer(answering, ok=False)
        await settle(lambda: checker.calls[other][1].cancelled())
        state = engine.states[KEY]
        await engine.stop()
        return state

    state = asyncio.run(go())
    assert (state.checks, state.failed_checks, state.up) == (1, 1, False)
    assert seen == [("198.51.100.20", "down",
                     f"connect 198.51.100.20:0: connect: connection refused (call {answering})")]


def test_never_more_than_two_checks_of_one_server_in_flight():
    checker, seen = Flights(), []

    async def go():
        engine = await two_in_flight(checker, seen)
        await asyncio.sleep(0.5)  # five more intervals with both hung
        calls = len(checker.calls)
        await engine.stop()
        return calls

    assert asyncio.run(go()) == 2
    assert checker.most == 2


def test_no_fresh_check_when_the_concurrency_bound_is_reached():
    checker, seen = Flights(), []

    async def go():
        engine = await two_in_flight(checker, seen, servers="198.51.100.20, 198.51.100.32", concurrency=2)
        await asyncio.sleep(0.3)  # three intervals overdue, no room for a fresh check
        calls = sorted(address for address, _fut in checker.calls)
        await engine.stop()
        return calls

    assert asyncio.run(go()) == ["198.51.100.20", "198.51.100.32"]
    assert checker.most == 2


def test_an_inconclusive_answer_of_the_stale_check_leaves_the_fresh_one_running():
    checker, seen = Flights(), []

    async def go():
        engine = await two_in_flight(checker, seen)
        checker.answer(0, ok=False, inconclusive=True)
        await settle(lambda: engine.states[KEY].inconclusive_checks == 1)
        await asyncio.sleep(0.15)  # past the next due time: the fresh check answers for this round
        fresh_waiting, calls = not checker.calls[1][1].done(), len(checker.calls)
        checker.answer(1, ok=False)
        await settle(lambda: seen)
        state = engine.states[KEY]
        await engine.stop()
        return fresh_waiting, calls, state

    fresh_waiting, calls, state = asyncio.run(go())
    assert fresh_waiting and calls == 2
    assert (state.inconclusive_checks, state.failed_checks, state.up) == (1, 1, False)
    assert [word for _a, word, _r in seen] == ["down"]


def test_rise_2_needs_two_answers_not_two_checks_in_flight():
    checker, seen = Flights(), []

    async def go():
        engine = await two_in_flight(checker, seen, rise=2, start="down")
        checker.answer(1)  # the fresh one: one success
        await settle(lambda: checker.calls[0][1].cancelled())
        after_one = engine.states[KEY]
        await settle(lambda: len(checker.calls) == 3)  # the next round
        checker.answer(2)
        await settle(lambda: seen)
        after_two = engine.states[KEY]
        await engine.stop()
        return after_one, after_two

    after_one, after_two = asyncio.run(go())
    assert (after_one.up, after_one.successes, after_one.checks) == (False, 1, 1)
    assert (after_two.up, after_two.checks) == (True, 2)
    assert [word for _a, word, _r in seen] == ["up"]
