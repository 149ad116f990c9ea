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

This module is the child's side (``serve``); the director's side, and the frame
codec both speak, are ``lvsmail.health.workerlink``. A worker exits when its stdin
closes; a worker that dies is restarted with its share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from lvsmail.health.engine import HealthEngine
from lvsmail.health.workerlink import frame, read_frame

#: Longest time a worker holds successful results before sending them.
FLUSH = 0.05


async def serve() -> None:
    """The worker: run an engine on the targets the director sends, send back every result."""
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

    def ignore(target, event) -> None:
        """Transitions are decided by the director from the results, not here."""

    engine = HealthEngine(None, ignore, on_result=on_result, workers=0)
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
