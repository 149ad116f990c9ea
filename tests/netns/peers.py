"""Peers for checker tests, all on 127.0.0.1 ephemeral ports: scripted servers, certificates, refused ports.

A ``ScriptedPeer`` follows a list of steps for each connection — send bytes,
pause, expect a line, start TLS, hold the line open, close — and records what
the client said, whether it talked during a pause (an "early talker", which
Postfix's postscreen punishes), and when the client closed the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Send:
    """Write these bytes."""

    data: bytes


@dataclass(frozen=True)
class Pause:
    """Wait this long, recording anything the client sends meanwhile as early talk."""

    seconds: float


@dataclass(frozen=True)
class Expect:
    """Read one line; it must start with ``prefix`` (case-insensitive), else the peer records an error and closes."""

    prefix: bytes


@dataclass(frozen=True)
class StartTLS:
    """Server side of a TLS handshake on the connection (after a STARTTLS/STLS go-ahead)."""


@dataclass(frozen=True)
class Hold:
    """Say nothing; wait (at most ``seconds``) until the client closes."""

    seconds: float = 10.0


@dataclass(frozen=True)
class Close:
    """Close the connection."""


@dataclass
class ScriptedPeer:
    """A TCP server on 127.0.0.1 that runs ``script`` for each connection (use ``async with``)."""

    script: list
    ssl_context: ssl.SSLContext | None = None  # implicit TLS from the first byte
    tls_context: ssl.SSLContext | None = None  # for StartTLS steps
    received: list[bytes] = field(default_factory=list)
    early: bytes = b""
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    closed_at: float | None = None
    port: int = 0

    async def __aenter__(self) -> ScriptedPeer:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks: set[asyncio.Task] = set()
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        pushback = b""
        try:
            for action in self.script:
                if isinstance(action, Send):
                    writer.write(action.data)
                    await writer.drain()
                elif isinstance(action, Pause):
                    try:
                        data = await asyncio.wait_for(reader.read(4096), action.seconds)
                    except TimeoutError:
                        continue
                    if data:  # the client talked before being asked: remember, and keep it for Expect
                        self.early += data
                        pushback += data
                        await asyncio.sleep(action.seconds)  # finish the pause anyway
                elif isinstance(action, Expect):
                    line = await self._line(reader, pushback)
                    pushback = b""
                    self.received.append(line)
                    if not line.lower().startswith(action.prefix.lower()):
                        self.errors.append(f"expected {action.prefix!r}, got {line!r}")
                        return
                elif isinstance(action, StartTLS):
                    await writer.start_tls(self.tls_context)
                elif isinstance(action, Hold):
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        while await asyncio.wait_for(reader.read(4096), action.seconds):
                            pass
                        self.closed_at = time.monotonic()
                        self.client_closed.set()
                    return
                elif isinstance(action, Close):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _line(reader: asyncio.StreamReader, pushback: bytes) -> bytes:
        """One line, starting with bytes already read during a pause."""
        if b"\n" in pushback:
            return pushback.split(b"\n", 1)[0] + b"\n"
        return pushback + await asyncio.wait_for(reader.readline(), 10)


@contextlib.contextmanager
def refused_port():
    """A loopback port where connections are refused: bound, never listening, held for the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


class Certificates:
    """A test CA (trustme) and a server certificate for ``mail.example.test`` and 127.0.0.1."""

    NAME = "mail.example.test"

    def __init__(self, directory):
        import trustme

        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(self.NAME, LOOPBACK)
        self.ca_file = str(directory / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx


def run(coro, limit: float = 20.0):
    """Run a test coroutine with a hard upper bound on its duration."""
    async def bounded():
        async with asyncio.timeout(limit):
            return await coro
    return asyncio.run(bounded())
