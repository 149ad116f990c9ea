"""The cheapest SMTP health check Python can make: a measuring stick for the lab benchmark, not a checker to use.

``bench/health.py --tools pyfloor`` runs it beside keepalived and lvsmail on the
same N servers, so the same run shows how much of lvsmail's CPU per check is
Python itself. It checks what lvsmail's check checks — the whole greeting with
code 220, EHLO answered 250 (multi-line), QUIT answered — each server every
``interval`` with a ``timeout`` per check, at a fixed rate from a jittered
start, on one plain epoll loop: no asyncio, no engine, no reasons, no state,
no IPVS (the benchmark fills the kernel table for it). Runs until SIGTERM.

    python3 bench/health_pyfloor.py --interval 2 --timeout 3 --port 25 --helo bench.example.org ADDRESS_FILE
"""

from __future__ import annotations

import argparse
import errno
import heapq
import itertools
import random
import select
import signal
import socket
import sys
import time


class Check:
    """One check in flight: its socket, what it has read, and the coroutine waiting for more."""

    __slots__ = ("sock", "buf", "eof", "gen", "deadline")


def dialogue(check: Check, helo: bytes):
    """The SMTP dialogue as a generator: yields whenever it needs more bytes; returns True when it passed."""
    for command, want in ((None, 220), (b"EHLO " + helo + b"\r\n", 250), (b"QUIT\r\n", None)):
        if command is not None:
            check.sock.send(command)
        while True:  # one whole reply: NNN- lines up to NNN (RFC 5321 section 4.2.1)
            end = check.buf.find(b"\n")
            if end < 0:
                if check.eof:
                    return False
                yield
                continue
            line = bytes(check.buf[:end + 1])
            del check.buf[:end + 1]
            if line[3:4] != b"-":
                break
        if want is not None and not line.startswith(b"%d" % want):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--port", type=int, default=25)
    ap.add_argument("--helo", default="bench.example.org")
    ap.add_argument("addresses", help="a file with one real server address per line")
    args = ap.parse_args()
    with open(args.addresses) as f:
        addrs = [line.strip() for line in f if line.strip()]
    helo = args.helo.encode()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    epoll = select.epoll()
    now = time.monotonic()
    starts = [(now + random.uniform(0, args.interval), a) for a in addrs]
    heapq.heapify(starts)
    live: dict[int, Check] = {}
    deadlines: list[tuple[float, int, int, Check]] = []
    seq = itertools.count()
    passed = failed = 0

    def end(fd: int, check: Check, ok: bool) -> None:
        nonlocal passed, failed
        epoll.unregister(fd)
        check.sock.close()
        del live[fd]
        check.gen.close()
        passed, failed = passed + ok, failed + (not ok)

    while not stop:
        now = time.monotonic()
        while starts and starts[0][0] <= now:
            when, addr = heapq.heappop(starts)
            heapq.heappush(starts, (when + args.interval, addr))
            check = Check()
            check.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            check.buf, check.eof = bytearray(), False
            err = check.sock.connect_ex((addr, args.port))
            if err not in (0, errno.EINPROGRESS):
                check.sock.close()
                failed += 1
                continue
            check.gen = dialogue(check, helo)
            next(check.gen)  # runs to its first read
            fd = check.sock.fileno()
            live[fd] = check
            epoll.register(fd, select.EPOLLIN)
            check.deadline = now + args.timeout
            heapq.heappush(deadlines, (check.deadline, next(seq), fd, check))
        while deadlines and deadlines[0][0] <= now:
            _, _, fd, check = heapq.heappop(deadlines)
            if live.get(fd) is check:
                end(fd, check, False)
        wait = min(starts[0][0] if starts else now + 1, deadlines[0][0] if deadlines else now + 1) - now
        for fd, _ in epoll.poll(max(0.0, wait)):
            check = live.get(fd)
            if check is None:
                continue
            try:
                data = check.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                check.buf += data
            else:
                check.eof = True
            try:
                next(check.gen)
            except StopIteration as done:
                end(fd, check, bool(done.value))
            except OSError:
                end(fd, check, False)
    print(f"pyfloor: {passed} passed, {failed} failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
