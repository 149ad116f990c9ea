"""Check worker processes: their results reach the director's engine, which alone decides transitions.

Real TCP on 127.0.0.1 (no root needed): one listening port, several closed ones.
"""

import asyncio
import os
import socket
import subprocess
import sys

from lvsmail.config import parse_cluster
from lvsmail.health.engine import AUTO_WORKER_TARGETS, HealthEngine, default_workers


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster(ports: list[int]) -> str:
    servers = ", ".join(f"{{address: 127.0.0.1, port: {p}}}" for p in ports)
    return f"""\
cluster: w
vips: [192.0.2.33]
services:
  - name: tcp
    vip: 192.0.2.33
    port: 25
    forwarding: nat
    realservers: [{servers}]
    check: {{type: connect, interval: 0.1, timeout: 1, fall: 1, rise: 1, start: up}}
"""


def test_worker_results_are_counted_and_transitions_decided_by_the_director():
    seen = []

    async def on_transition(target, event):
        seen.append((target.port, event.word, event.reason))

    async def go():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        open_port = server.sockets[0].getsockname()[1]
        closed = [closed_port() for _ in range(7)]
        engine = HealthEngine(parse_cluster(cluster([open_port] + closed)), on_transition, workers=1)
        by_worker = [k for k in engine.states if engine.share(k) == 1]
        assert by_worker, "the hash put every target in the director's share"
        engine.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not all(s.checks >= 2 for s in engine.states.values()):
            assert loop.time() < end, "the worker's results did not arrive"
            await asyncio.sleep(0.05)
        pids = engine.worker_pids()
        await engine.stop()
        server.close()
        await server.wait_closed()
        return engine, open_port, closed, by_worker, pids

    engine, open_port, closed, by_worker, pids = asyncio.run(go())
    assert len(pids) == 1
    assert engine.worker_pids() == [] and not _exists(pids[0])  # stop() ended the worker process
    assert engine.states[("tcp", "127.0.0.1", open_port)].up
    for port in closed:
        st = engine.states[("tcp", "127.0.0.1", port)]
        assert not st.up and "connect: connection refused" in st.last_failure
    # Every closed port went down exactly once, decided here whichever process checked it.
    assert sorted(p for p, word, _ in seen if word == "down") == sorted(closed)
    # The worker's share was checked only by the worker, and its results counted here.
    assert all(engine.states[k].checks >= 2 for k in by_worker)


def test_one_worker_by_default_only_for_a_large_cluster_of_real_checks_on_several_cpus():
    big = AUTO_WORKER_TARGETS
    assert default_workers(big, real_checks=True, cpus=2) == 1
    assert default_workers(big - 1, real_checks=True, cpus=2) == 0  # small: one loop is enough
    assert default_workers(big, real_checks=True, cpus=1) == 0  # a second process would only compete
    assert default_workers(big, real_checks=False, cpus=8) == 0  # a scripted checker cannot cross processes
    assert default_workers(big, real_checks=True, cpus=None) == 0


def test_a_sigterm_meant_for_the_whole_process_group_does_not_end_a_worker():
    """systemd's KillMode=control-group signals every process of the director: the worker must not die of it
    (the director, itself shutting down, restarted it and waited for its start-up); it ends when the director
    closes its pipe."""
    import signal

    async def go():
        engine = HealthEngine(parse_cluster(cluster([closed_port() for _ in range(8)])), lambda t, e: asyncio.sleep(0),
                              workers=1)
        engine.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not all(s.checks >= 1 for s in engine.states.values()):  # the worker is up and reporting
            assert loop.time() < end, "the worker's results did not arrive"
            await asyncio.sleep(0.05)
        pids = engine.worker_pids()
        os.kill(pids[0], signal.SIGTERM)
        await asyncio.sleep(1.0)
        alive_after_sigterm = engine.worker_pids() == pids  # the same process, not a restarted one
        await engine.stop()
        return alive_after_sigterm, pids[0]

    alive, pid = asyncio.run(go())
    assert alive
    assert not _exists(pid)  # closing its stdin ended it


def _exists(pid):
    """Whether process ``pid`` still exists (stop() waits for the worker, so an ended one is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_director_s_side_of_the_workers_imports_neither_the_engine_nor_the_worker():
    """The engine imports the link; the link must not import the engine or the child's side back (no cycle)."""
    code = ("import sys, lvsmail.health.workerlink; "
            "print(sorted(m for m in sys.modules if m in ('lvsmail.health.engine', 'lvsmail.health.worker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, lvsmail.health.engine; print('lvsmail.health.worker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_message_survives_the_frame_codec():
    from lvsmail.health.result import Result
    from lvsmail.health.workerlink import frame, read_frame

    message = [(("smtp", "198.51.100.20", 25), Result(False, "smtp 198.51.100.20:25: refused", 0.001))]

    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(frame(message) + frame(("targets", {}, None)))
        reader.feed_eof()
        first, second = await read_frame(reader), await read_frame(reader)
        try:
            await read_frame(reader)
        except asyncio.IncompleteReadError:
            return first, second, "gone"
        return first, second, "more"

    assert asyncio.run(go()) == (message, ("targets", {}, None), "gone")
