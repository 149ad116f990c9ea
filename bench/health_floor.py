"""How cheap can an asyncio SMTP check be? A lean prototype beside lvsmail's engine (no IPVS needed).

Same schedule as the engine (one task per server, fixed rate, jittered start, a
semaphore), but the dialogue runs over a small ``asyncio.Protocol`` that splits
lines itself instead of asyncio streams (``open_connection``: name resolution
shortcut, StreamReader, StreamWriter, a future per line) and builds no reason
string on success. It checks what lvsmail's check checks: the whole multi-line
greeting with code 220, EHLO answered 250 (multi-line), QUIT answered.

    python3 bench/health_floor.py --n 1000 --seconds 15 [--uvloop]

Only a measuring stick for a proposal, not a checker to use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.health_tools import PORT, Responder, addresses, build_responder, raise_nofile  # noqa: E402


class SMTPClient(asyncio.Protocol):
    """Buffers what the server sends; ``reply()`` waits for one whole SMTP reply."""

    def __init__(self, loop):
        self.loop = loop
        self.buf = b""
        self.waiter = None
        self.closed = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def reply(self) -> int:
        """The code of the next whole reply (``NNN-`` lines up to ``NNN ``, RFC 5321 section 4.2.1)."""
        while True:
            start = 0
            while True:
                end = self.buf.find(b"\n", start)
                if end < 0:
                    break
                line = self.buf[start:end]
                if len(line) < 4 or line[3:4] != b"-":
                    self.buf = self.buf[end + 1:]
                    return int(line[:3])
                start = end + 1
            if self.closed:
                raise ConnectionError("closed")
            self.waiter = self.loop.create_future()
            await self.waiter


async def smtp_check(loop, addr: tuple[str, int], helo: bytes, timeout: float) -> bool:
    """One check; True if the server greeted 220 and answered EHLO 250."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    proto = SMTPClient(loop)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, addr)
            await loop.create_connection(lambda: proto, sock=sock)
            if await proto.reply() != 220:
                return False
            proto.transport.write(b"EHLO " + helo + b"\r\n")
            if await proto.reply() != 250:
                return False
            proto.transport.write(b"QUIT\r\n")
            await proto.reply()
            return True
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if proto.transport is not None:
            proto.transport.abort()
        else:
            sock.close()


async def run(addrs: list[str], interval: float, timeout: float, warmup: float, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(512)
    done = [0]
    rng = random.Random(1)

    async def watch(a: str):
        await asyncio.sleep(rng.uniform(0, interval))
        target = (a, PORT)
        while True:
            started = loop.time()
            async with sem:
                await smtp_check(loop, target, b"bench.example", timeout)
            done[0] += 1
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    tasks = [asyncio.create_task(watch(a)) for a in addrs]
    await asyncio.sleep(warmup)
    r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    await asyncio.sleep(seconds)
    r1, c1, t1 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    n = max(1, c1 - c0)
    return {"rate": (c1 - c0) / (t1 - t0), "user_ms": (r1.ru_utime - r0.ru_utime) / n * 1e3,
            "sys_ms": (r1.ru_stime - r0.ru_stime) / n * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="health-floor-", dir=os.environ.get("LVSMAIL_LAB_OUT")))
    addrs = addresses(args.n)
    resp = Responder(build_responder(work), addrs)
    coro = run(addrs, args.interval, args.timeout, args.warmup, args.seconds)
    if args.uvloop:
        import uvloop
        res = uvloop.run(coro)
    else:
        res = asyncio.run(coro)
    resp.cmd("reset")
    resp.close()
    print(f"lean prototype{' (uvloop)' if args.uvloop else ''}: N={args.n}: {res['rate']:.1f} checks/s of"
          f" {args.n / args.interval:.0f}; CPU per check {res['user_ms']:.3f} ms user + {res['sys_ms']:.3f} ms system")
    return 0


if __name__ == "__main__":
    sys.exit(main())
