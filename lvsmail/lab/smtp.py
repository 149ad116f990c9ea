"""SMTP on both ends of the lab: an aiosmtpd sink in each real server, aiosmtplib clients.

Each real server's sink runs its own asyncio loop in a thread that entered the
server's namespace, listening on every address (so packets delivered with the VIP
as destination, by TUN or DR, are accepted as well as NAT's rewritten ones). Its
greeting names the real server (``220 rs2 ...``), which is how a client learns
where the director sent it. One process hosts every sink: under emulation each
extra Python process costs seconds to start. A sink can stop and resume accepting
on its own (``stop_listening``/``start_listening``), which is how health-check
tests make one real server fail.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from lvsmail.net import netns


@dataclass(frozen=True)
class Delivery:
    """One message a sink accepted."""

    server: str
    peer: str
    mail_from: str
    rcpt_tos: tuple[str, ...]


class _Handler:
    """aiosmtpd handler that records each message's envelope."""

    def __init__(self, sinks: SmtpSinks, name: str) -> None:
        self.sinks, self.name = sinks, name

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        """Accept the message (RFC 5321 §4.2: 250 after the final dot) and remember it."""
        peer = session.peer[0] if session.peer else "?"
        with self.sinks.lock:
            self.sinks.deliveries.append(Delivery(self.name, peer, envelope.mail_from, tuple(envelope.rcpt_tos)))
        return "250 2.0.0 OK queued"


class SmtpSinks:
    """SMTP servers in several namespaces, started together; a context manager."""

    def __init__(self, servers: Iterable[tuple[str, str]], ports: Iterable[int] = (25,)) -> None:
        """``servers`` are (name, namespace) pairs; each listens on every address at ``ports``."""
        self.servers = list(servers)
        self.ports = tuple(ports)
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        self._loops: dict[str, asyncio.AbstractEventLoop] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._threads: list[threading.Thread] = []
        self._ready: dict[str, threading.Event] = {}
        self._errors: dict[str, BaseException] = {}
        self._listeners: dict[str, dict[int, asyncio.AbstractServer]] = {}
        self._handlers: dict[str, _Handler] = {}

    def start(self, timeout: float = 60) -> SmtpSinks:
        """Start every server and wait until all listen."""
        for name, ns in self.servers:
            self._ready[name] = threading.Event()
            self._threads.append(netns.start_in_netns(ns, self._serve, name, thread_name=f"smtp:{name}"))
        deadline = time.monotonic() + timeout
        for name, ev in self._ready.items():
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"SMTP sink {name} did not start within {timeout:.0f} s")
            if name in self._errors:
                raise RuntimeError(f"SMTP sink {name}: {self._errors[name]}") from self._errors[name]
        return self

    def _serve(self, name: str) -> None:
        """Thread body: run this server's loop until stopped."""
        try:
            asyncio.run(self._main(name))
        except BaseException as exc:  # reported through start()
            self._errors[name] = exc
            self._ready[name].set()

    async def _main(self, name: str) -> None:
        """Listen on every port, signal readiness, wait for stop."""
        loop = asyncio.get_running_loop()
        self._handlers[name] = _Handler(self, name)
        self._listeners[name] = {}
        await self._listen(name, self.ports)
        self._loops[name] = loop
        self._stops[name] = stop = asyncio.Event()
        self._ready[name].set()
        try:
            await stop.wait()
        finally:
            for s in self._listeners.pop(name).values():
                s.close()
                await s.wait_closed()

    async def _listen(self, name: str, ports: Iterable[int]) -> None:
        """Open the listening sockets of ``name`` on ``ports`` (those not open already)."""
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        handler, listeners = self._handlers[name], self._listeners[name]
        for port in ports:
            if port not in listeners:
                listeners[port] = await loop.create_server(
                    lambda: SMTP(handler, hostname=name, ident="lvsmail lab sink", timeout=60, loop=loop),
                    host=None, port=port, reuse_address=True)

    async def _unlisten(self, name: str, ports: Iterable[int]) -> None:
        """Close the listening sockets of ``name`` on ``ports``; accepted sessions stay open.

        No ``wait_closed()``: since Python 3.12.1 it waits for those sessions to end.
        """
        for port in ports:
            server = self._listeners[name].pop(port, None)
            if server is not None:
                server.close()

    def _in_loop(self, name: str, coro, timeout: float) -> None:
        """Run ``coro`` in the loop of server ``name`` and wait for it."""
        if name not in self._loops:
            coro.close()
            raise KeyError(f"no running SMTP sink named {name!r}")
        asyncio.run_coroutine_threadsafe(coro, self._loops[name]).result(timeout)

    def stop_listening(self, name: str, ports: Iterable[int] | None = None, timeout: float = 10) -> None:
        """Stop accepting on one server (all its ports by default).

        New connections are refused with a TCP RST, as by a mail server that was
        shut down; sessions already accepted go on, so a quiescent real server's
        draining can be observed.
        """
        self._in_loop(name, self._unlisten(name, self.ports if ports is None else ports), timeout)

    def start_listening(self, name: str, ports: Iterable[int] | None = None, timeout: float = 10) -> None:
        """Accept again on ports closed by :meth:`stop_listening` (all of the server's by default)."""
        self._in_loop(name, self._listen(name, self.ports if ports is None else ports), timeout)

    def listening(self, name: str) -> tuple[int, ...]:
        """Ports on which server ``name`` accepts connections now."""
        return tuple(sorted(self._listeners.get(name, {})))

    def stop(self) -> None:
        """Stop every server."""
        for name, loop in list(self._loops.items()):
            loop.call_soon_threadsafe(self._stops[name].set)
        for t in self._threads:
            t.join(timeout=10)
        self._loops.clear()

    def __enter__(self) -> SmtpSinks:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def counts(self) -> Counter:
        """Messages accepted per server."""
        with self.lock:
            return Counter(d.server for d in self.deliveries)

    def reset(self) -> None:
        """Forget deliveries so far."""
        with self.lock:
            self.deliveries.clear()


@dataclass
class SendResult:
    """What happened to one message sent through the VIP."""

    source: str
    server: str | None  # the real server named in the greeting
    ok: bool
    error: str = ""


@dataclass
class SendReport:
    """All messages of one :func:`send_messages` call."""

    results: list[SendResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        """Messages the server accepted."""
        return sum(r.ok for r in self.results)

    def by_server(self) -> Counter:
        """Accepted messages per real server, from the greetings."""
        return Counter(r.server for r in self.results if r.ok)


def greeting_server(greeting: str) -> str | None:
    """The host name in a ``220 NAME ...`` greeting (RFC 5321 §4.2)."""
    parts = greeting.split()
    return parts[0] if parts else None


async def _send_one(host: str, port: int, source: str, index: int, timeout: float) -> SendResult:
    """One SMTP session: connect from ``source``, send one message, quit."""
    import aiosmtplib

    smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout, source_address=(source, 0),
                           local_hostname="client.example.org", start_tls=False, use_tls=False)
    try:
        resp = await smtp.connect()
        server = greeting_server(resp.message)
        msg = (f"From: lab@example.org\r\nTo: user@example.org\r\nSubject: lab message {index}\r\n"
               f"Message-ID: <lab-{index}-{time.time_ns()}@example.org>\r\n\r\nHello through the VIP.\r\n")
        await smtp.sendmail("lab@example.org", ["user@example.org"], msg)
        await smtp.quit()
        return SendResult(source, server, True)
    except Exception as exc:
        smtp.close()
        return SendResult(source, None, False, f"{type(exc).__name__}: {exc}")


async def _send_all(host: str, port: int, sources: list[str], count: int, concurrency: int,
                    timeout: float) -> list[SendResult]:
    """Send ``count`` messages, ``concurrency`` at a time, sources taken in turn."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> SendResult:
        async with sem:
            return await _send_one(host, port, sources[i % len(sources)], i, timeout)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def send_messages(ns: str, host: str, port: int = 25, count: int = 30, sources: Iterable[str] = (),
                  concurrency: int = 5, timeout: float = 20) -> SendReport:
    """Send ``count`` messages to ``host:port`` from namespace ``ns`` and report where they went."""
    srcs = list(sources) or ["0.0.0.0" if ":" not in host else "::"]
    started = time.monotonic()
    results = netns.run_in_netns(ns, asyncio.run, _send_all(host, port, srcs, count, concurrency, timeout))
    return SendReport(results, time.monotonic() - started)


async def _hold(host: str, port: int, count: int, source: str | None, timeout: float):
    """Open ``count`` TCP connections one after another, read each greeting, keep them open."""
    conns, servers = [], []
    for _ in range(count):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0) if source else None), timeout)
        line = await asyncio.wait_for(reader.readline(), timeout)
        servers.append(greeting_server(line.decode(errors="replace")[4:]))
        conns.append(writer)
    return conns, servers


class HeldConnections:
    """TCP connections held open from one namespace (for least-connection tests); a context manager."""

    def __init__(self, ns: str, host: str, port: int, count: int, source: str | None = None,
                 timeout: float = 20) -> None:
        self.ns, self.host, self.port, self.count, self.source, self.timeout = ns, host, port, count, source, timeout
        self.servers: list[str | None] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writers: list = []
        self._thread: threading.Thread | None = None

    def open(self) -> HeldConnections:
        """Open the connections (sequentially, so the scheduler sees each one before the next)."""
        ready = threading.Event()
        box: dict = {}

        def body() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._writers, self.servers = loop.run_until_complete(
                    _hold(self.host, self.port, self.count, self.source, self.timeout))
            except BaseException as exc:
                box["error"] = exc
            ready.set()
            if "error" not in box:
                loop.run_forever()
            for w in self._writers:
                w.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = netns.start_in_netns(self.ns, body, thread_name="held-connections")
        ready.wait()
        if "error" in box:
            self._thread.join(timeout=5)
            raise box["error"]
        return self

    def close(self) -> None:
        """Close every connection."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> HeldConnections:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
