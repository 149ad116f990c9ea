"""An overloaded director must not take healthy servers out: a late timeout is inconclusive, not a failure.

Times are passed in (``step``); the engine tests script the checker; the
dialogue tests use real sockets on 127.0.0.1. (The kernel updates' batching
and the health file's rate are the kernel table's and the published files'
tests.)
"""

import asyncio
import select
import socket

from lvsmail.config import parse_cluster
from lvsmail.health.checkers import run_check
from lvsmail.health.checkers.dialogue import Dialogue
from lvsmail.health.driver import driver_for
from lvsmail.health.engine import HealthEngine
from lvsmail.health.result import Result
from lvsmail.health.state import HealthState, step
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
