"""An overloaded director must not take healthy servers out: late timeouts, batched kernel updates, health file rate.

Times are passed in (``step``) or come from a fake clock (the health file); the
engine and director tests script the checker; the dialogue tests use real
sockets on 127.0.0.1.
"""

import asyncio
import json
import select
import socket

from lvsmail.config import parse_cluster
from lvsmail.director.daemon import Director
from lvsmail.health.checkers import run_check
from lvsmail.health.checkers.dialogue import Dialogue
from lvsmail.health.engine import HealthEngine
from lvsmail.health.driver import driver_for
from lvsmail.health.result import Result
from lvsmail.health.state import HealthState, step
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import ServiceKey
from lvsmail.spec import CheckSpec
from support.cluster import cluster_yaml, service

TIMED_OUT = Result(False, "smtp 198.51.100.20:25: timeout after 3.0 s waiting for greeting", 3.0, "greeting",
                   expired=True)
REFUSED = Result(False, "smtp 198.51.100.20:25: connect: connection refused", 0.001, "connect")
OK = Result(True, "smtp 198.51.100.20:25: ok: greeting, EHLO, QUIT", 0.002, "done")


# -- what a late timeout means --------------------------------------------------------------

LATE = Result(False, TIMED_OUT.reason + " (inconclusive: the answer was waiting unread, the director was late)",
              3.0, "greeting", expired=True, inconclusive=True)


def test_inconclusive_result_neither_counts_nor_resets_a_streak():
    spec = CheckSpec(type="smtp", fall=2, rise=2)
    state = HealthState.initial(spec, 0.0)
    state, event = step(state, REFUSED, 1.0)
    assert (state.up, state.failures, event) == (True, 1, None)
    state, event = step(state, LATE, 2.0)
    assert (state.up, state.failures, event, state.inconclusive_checks) == (True, 1, None, 1)
    assert state.last_reason == LATE.reason and state.checks == 2
    state, event = step(state, REFUSED, 3.0)  # the streak went on where it was
    assert not state.up and event is not None and event.streak == 2


def test_inconclusive_result_does_not_bring_a_down_server_up_either():
    spec = CheckSpec(type="smtp", rise=1, start="down")
    state, event = step(HealthState.initial(spec, 0.0), LATE, 1.0)
    assert not state.up and event is None and state.successes == 0


def test_a_timeout_with_nothing_waiting_is_a_failure():
    state, event = step(HealthState.initial(CheckSpec(type="smtp", fall=1), 0.0), TIMED_OUT, 1.0)
    assert not state.up and event is not None and state.inconclusive_checks == 0


ENGINE_CLUSTER = cluster_yaml(service(realservers=["198.51.100.20"],
                                      check={"type": "smtp", "interval": 0.01, "timeout": 3}), name="t")


def _engine_after(result: Result) -> tuple[HealthEngine, list]:
    seen = []

    async def checker(spec, address, port, creds, virtual=None):
        return result

    async def on_transition(target, event):
        seen.append(event.word)

    async def go():
        engine = HealthEngine(parse_cluster(ENGINE_CLUSTER), on_transition, checker=checker)
        engine.start()
        key = ("smtp", "198.51.100.20", 25)
        while engine.states[key].checks < 3:
            await asyncio.sleep(0.01)
        await engine.stop()
        return engine

    return asyncio.run(go()), seen


def test_engine_keeps_a_server_up_while_its_timeouts_are_our_fault():
    engine, seen = _engine_after(LATE)
    state = engine.states[("smtp", "198.51.100.20", 25)]
    assert seen == [] and state.up and state.inconclusive_checks >= 3


def test_engine_takes_a_server_down_on_a_real_timeout():
    engine, seen = _engine_after(TIMED_OUT)
    assert seen[0] == "down" and not engine.states[("smtp", "198.51.100.20", 25)].up


# -- noticing that the answer was there: real sockets on 127.0.0.1 ---------------------------

async def _server(greet: bool):
    async def handle(reader, writer):
        if greet:
            writer.write(b"220 ready\r\n")
            await writer.drain()
        await reader.read()  # then silence until the client goes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_answer_waiting_in_the_kernel_is_noticed():
    async def check():
        # A peer outside the event loop: it greets while the loop is stalled, as a real server would.
        with socket.create_server(("127.0.0.1", 0)) as listener:
            dlg = Dialogue("smtp", "127.0.0.1", listener.getsockname()[1])
            await dlg.connect()
            peer, _ = listener.accept()
            with peer:
                peer.sendall(b"220 ready\r\n")
                fd = dlg.sock.fileno()
                # Stand in for a stalled event loop: block in select() (not the loop) until the greeting is in.
                assert select.select([fd], [], [], 5.0)[0]
                waiting = dlg.answer_waiting()
                dlg.close()
        return waiting

    async def go():
        return await driver_for().run(check())

    assert asyncio.run(go()) is True


def test_silence_is_not_mistaken_for_a_waiting_answer():
    async def go():
        server, port = await _server(greet=False)
        dlg = Dialogue("smtp", "127.0.0.1", port)
        await driver_for().run(dlg.connect())
        waiting = dlg.answer_waiting()
        dlg.close()
        server.close()
        return waiting

    assert asyncio.run(go()) is False


def test_a_connection_established_but_not_yet_noticed_counts_as_waiting():
    async def go():
        server, port = await _server(greet=False)
        dlg = Dialogue("smtp", "127.0.0.1", port)
        connecting = driver_for().run(dlg.connect())
        assert dlg.sock is not None  # the connect has been issued and waits for the driver to see it complete
        # Stand in for a stalled loop: block in select() until the kernel has completed the handshake.
        assert select.select([], [dlg.sock.fileno()], [], 5.0)[1]
        waiting = dlg.answer_waiting()
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        dlg.close()
        server.close()
        return waiting

    assert asyncio.run(go()) is True


def test_run_check_reports_a_late_timeout_as_inconclusive(monkeypatch):
    monkeypatch.setattr(Dialogue, "answer_waiting", lambda self: True)

    async def go():
        server, port = await _server(greet=False)
        try:
            return await run_check(CheckSpec(type="smtp", timeout=0.2), "127.0.0.1", port)
        finally:
            server.close()

    r = asyncio.run(go())
    assert r.inconclusive and r.expired and not r.ok
    assert r.reason.endswith("timeout after 0.2 s waiting for greeting (inconclusive: the answer was waiting unread,"
                             " the director was late)")


# -- the director: batched kernel updates, health file at most once a second ------------------

DIRECTOR_CLUSTER = cluster_yaml(service(), service("submission", 587, realservers=["198.51.100.20"]),
                                check={"type": "connect", "interval": 3600, "start": "up"}, name="batch")
SMTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)
SUBMISSION = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 587)


class Clock:
    """A settable monotonic clock."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


async def _never_checked(spec, address, port, creds, virtual=None, **kw):
    await asyncio.Event().wait()  # the tests decide transitions themselves


async def _with_director(tmp_path, body, clock=None):
    path = tmp_path / "cluster.yaml"
    path.write_text(DIRECTOR_CLUSTER)
    kernel = FakeIPVS()
    options = {"checker": _never_checked}
    if clock is not None:
        options["clock"] = clock
    d = Director(str(path), kernel, repair_interval=3600, state_dir=str(tmp_path / "state"),
                 engine_options=options)
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 5)
    try:
        return await body(d, kernel)
    finally:
        d.request_stop()
        await task


def _down(d: Director, service: str, address: str, port: int):
    """Mark a server down in the engine, as a failed check would, and return its target and event."""
    key = (service, address, port)
    target = d.engine._targets[key]
    state, event = step(d.engine.states[key], REFUSED, d.engine.clock())
    d.engine.states[key] = state
    return target, event


class CountingSync:
    """Wraps the reconciler's sync: records each call's ``only`` and can hold a call until released."""

    def __init__(self, reconciler):
        self.inner = reconciler.sync
        self.calls: list[set] = []
        self.hold: asyncio.Event | None = None

    async def __call__(self, desired, *args, only=None, **kw):
        self.calls.append(set(only) if only is not None else None)
        if self.hold is not None:
            await self.hold.wait()
        return await self.inner(desired, *args, only=only, **kw)


def test_transitions_decided_together_share_one_kernel_update(tmp_path):
    async def body(d, kernel):
        spy = d.reconciler.sync = CountingSync(d.reconciler)
        for service, address, port in (("smtp", "198.51.100.20", 25), ("smtp", "198.51.100.32", 25),
                                       ("submission", "198.51.100.20", 587)):
            await d._on_transition(*_down(d, service, address, port))
        await d._transition_task
        assert spy.calls == [{SMTP, SUBMISSION}]
        return kernel

    kernel = asyncio.run(_with_director(tmp_path, body))
    assert not kernel.table[SMTP].dests and not kernel.table[SUBMISSION].dests


def test_transitions_during_a_kernel_update_wait_for_the_next_one(tmp_path):
    async def body(d, kernel):
        d.TRANSITION_BATCH = 0.0  # spacing aside: only the grouping is under test
        spy = d.reconciler.sync = CountingSync(d.reconciler)
        spy.hold = asyncio.Event()
        await d._on_transition(*_down(d, "smtp", "198.51.100.20", 25))
        while not spy.calls:  # the first update has started and is held in the kernel
            await asyncio.sleep(0)
        await d._on_transition(*_down(d, "smtp", "198.51.100.32", 25))
        await d._on_transition(*_down(d, "submission", "198.51.100.20", 587))
        spy.hold.set()
        await d._transition_task
        assert spy.calls == [{SMTP}, {SMTP, SUBMISSION}]
        return kernel

    kernel = asyncio.run(_with_director(tmp_path, body))
    assert not kernel.table[SMTP].dests and not kernel.table[SUBMISSION].dests


def test_health_file_is_written_at_most_once_a_second(tmp_path):
    clock = Clock()

    async def body(d, kernel):
        path = d.health_file()
        d._save_health(now=True)
        assert path.exists()
        path.unlink()
        clock.t += 0.4
        d._save_health()
        assert not path.exists() and d._health_later is not None  # deferred, not dropped
        clock.t += 0.6
        d._health_later.cancel()  # the fake clock moved; run the deferred write by hand
        d._save_health_later()
        assert path.exists() and d._health_later is None
        path.unlink()
        d._save_health(now=True)  # a final write is never deferred
        return json.loads(path.read_text())

    health = asyncio.run(_with_director(tmp_path, body, clock=clock))
    assert {r["address"] for r in health["realservers"]} == {"198.51.100.20", "198.51.100.32"}
