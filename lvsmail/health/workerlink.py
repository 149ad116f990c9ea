"""The director's side of the health-check worker processes, and the frame codec both sides speak.

The parent (the director's engine) starts each worker as ``python3 -m lvsmail.health.worker``,
sends it its share of targets and counts the results it sends back; the child's side is
``lvsmail.health.worker``. Keeping the parent's half here, apart from the child's, lets the engine
import it without the worker importing the engine back (no import cycle).

The wire is a pipe between parent and child: each message is a 4-byte length and
a pickle (both ends are this program, started by the director itself).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
import sys
import time
from typing import Protocol

from lvsmail.health.result import Result

log = logging.getLogger("lvsmail.health")

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


class ResultSink(Protocol):
    """Where a worker's results go: the director's engine, which counts them."""

    def remote_result(self, key: tuple[str, str, int], result: Result) -> None:
        """Count one result a worker sent."""


class WorkerLink:
    """The director's side of one worker process: start, give it targets, count its results, restart it."""

    def __init__(self, index: int, engine: ResultSink) -> None:
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

    @property
    def pid(self) -> int | None:
        """The worker process's id while one is running, else None."""
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

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
