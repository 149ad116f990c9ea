"""Health-check worker processes: more CPUs for checks, one place for decisions.

One event loop runs out of CPU near a few hundred SMTP checks a second on a
slow machine, and a thousand real servers every 2 s need 500. The engine can
therefore share its targets with worker processes (``HealthEngine(workers=N)``):

* the director's engine sends each worker its share of targets (whole
  ``Target`` values, again after every reload, so a worker keeps the state of
  its unchanged targets exactly as the director does);
* a worker runs the ordinary engine on its share, on its own event loop, and
  sends every result back: failures at once, successes gathered for up to
  ``FLUSH`` seconds, so 500 results a second cost a few writes;
* the director counts each result with the same pure ``step`` it uses for its
  own checks, so transitions, alerts and status are decided in one process.

The wire is a pipe between parent and child: each message is a 4-byte length and
a pickle (both ends are this program, started by the director itself). A worker
exits when its stdin closes; a worker that dies is restarted with its share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import sys
import time

log = logging.getLogger("lvsmail.health")

#: Longest time a worker holds successful results before sending them.
FLUSH = 0.05
#: Shortest time between two restarts of one worker (a worker that cannot start must not spin).
RESTART_PAUSE = 5.0
_LEN = struct.Struct("!I")


def frame(message) -> bytes:
    """One message on the wire."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader):
    """The next message; IncompleteReadError when the other end has gone."""
    size = _LEN.unpack(await reader.readexactly(_LEN.size))[0]
    return pickle.loads(await reader.readexactly(size))


class WorkerLink:
    """The director's side of one worker process: start, give it targets, count its results, restart it."""

    def __init__(self, index: int, engine) -> None:
        self.index = index
        self.engine = engine
        self.assigned: tuple[dict, str | None] = ({}, None)
        self.proc: asyncio.subprocess.Process | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"health worker {index}")
        self._stopping = False

    def assign(self, targets: dict, maintenance_dir: str | None) -> None:
        """Give the worker its share (sent now if it is running, else when it starts)."""
        self.assigned = (targets, maintenance_dir)
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(frame(("targets", targets, maintenance_dir)))

    async def _run(self) -> None:
        """Start the worker and count its results; restart it if it dies while the engine runs."""
        while not self._stopping:
            started = time.monotonic()
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "lvsmail.health.worker", stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE)
            except OSError as exc:  # its targets go unchecked meanwhile: say so loudly, try again
                log.error("health: cannot start check worker %d: %s", self.index, exc)
                await asyncio.sleep(RESTART_PAUSE)
                continue
            self.assign(*self.assigned)
            try:
                while True:
                    for key, result in await read_frame(self.proc.stdout):
                        self.engine.remote_result(key, result)
            except asyncio.IncompleteReadError:
                pass
            status = await self.proc.wait()
            if self._stopping:
                return
            log.error("health: check worker %d (pid %d) exited with status %s; restarting it",
                      self.index, self.proc.pid, status)
            await asyncio.sleep(max(0.0, started + RESTART_PAUSE - time.monotonic()))

    async def stop(self) -> None:
        """Close the worker's stdin (it exits) and wait; kill it if it does not exit within 5 s."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def serve() -> None:
    """The worker: run an engine on the targets the director sends, send back every result."""
    from lvsmail.health.engine import HealthEngine

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", buffering=0))
    outbox: list = []
    timer: list[asyncio.TimerHandle | None] = [None]

    def flush() -> None:
        if timer[0] is not None:
            timer[0].cancel()
            timer[0] = None
        if outbox:
            out.write(frame(outbox[:]))
            outbox.clear()

    def on_result(key, result) -> None:
        outbox.append((key, result))
        if not result.ok:  # a failure may start a transition: no waiting
            flush()
        elif timer[0] is None:
            timer[0] = loop.call_later(FLUSH, flush)

    async def ignore(target, event) -> None:
        """Transitions are decided by the director from the results, not here."""

    engine = HealthEngine(None, ignore, workers=0)
    engine.on_result = on_result
    engine.start()
    try:
        while True:
            try:
                message = await read_frame(reader)
            except asyncio.IncompleteReadError:
                return  # the director closed our stdin: exit
            if message[0] == "targets":
                engine.assign(message[1], message[2])
    finally:
        await engine.stop()
        flush()


def main() -> int:
    """Entry point of ``python3 -m lvsmail.health.worker`` (started by the engine, not by hand)."""
    # The director logs transitions; a worker only reports its own trouble.
    # Under systemd its standard error is the director's journal stream: the same priorities as the director.
    from lvsmail.systemd import configure_logging, journal_stream

    if journal_stream():
        configure_logging(logging.ERROR)
    else:
        logging.basicConfig(level=logging.ERROR, format="lvsmail health worker: %(levelname)s %(message)s")
    # A worker ends when the director closes its stdin (or dies). A signal to the whole process group
    # (systemd's KillMode=control-group, Ctrl-C in a terminal) reaches the worker too: dying of it made
    # the director, which was shutting down itself, restart the worker and wait for its start-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from lvsmail.health import loop

    loop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
