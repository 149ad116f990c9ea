"""One connection of one check: the step it waits for, line and reply reading, TLS upgrade.

Checkers are linear coroutines; this class keeps what they share so each one
reads as the protocol's dialogue. ``step`` always names what the checker is
waiting for, so a timeout or a dropped connection is reported as
``timeout after 2.0 s waiting for greeting`` without per-call bookkeeping.

The connection is a small ``asyncio.Protocol`` that buffers what the peer sends
and wakes the checker's one pending read, not asyncio streams: a check is a
handful of short lines, and StreamReader/StreamWriter (name lookup shortcut,
flow-control futures, a future and a limit check per line) cost more than the
dialogue itself. The checker still reads as a linear dialogue (``await
dlg.read_smtp_reply(...)``); only the plumbing under it changed.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import ipaddress
import select
import socket
import ssl
import termios
from typing import Any

#: Longest line accepted (RFC 5321 section 4.5.3.1.5 allows 512 octets for an SMTP reply line;
#: HTTP header and IMAP lines may be longer, and we only need to bound memory).
LINE_LIMIT = 16384
#: Most lines in one multi-line reply (an EHLO reply has a dozen; a greeting a few).
MAX_REPLY_LINES = 200
#: Buffered bytes above which reading from the peer pauses until the checker consumes them
#: (a peer that floods cannot grow our memory beyond this before the check's deadline).
HIGH_WATER = 4 * LINE_LIMIT


class CheckFailed(Exception):
    """The peer answered in a way that fails the check; the message is the tail of the reason."""


@functools.lru_cache(maxsize=4096)
def hostport(address: str, port: int) -> str:
    """``a:p`` for IPv4, ``[a]:p`` for IPv6."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


def clip(text: str, limit: int = 200) -> str:
    """Shorten peer-supplied text for a reason; printable characters only."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Connection(asyncio.Protocol):
    """Buffers what the peer sends; the dialogue's one pending read waits on ``wait()``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.eof = False  # the peer closed its side (or the connection is gone)
        self.lost = False  # the connection is gone altogether
        self.error: BaseException | None = None  # why it was lost, if by an error
        self.paused = False
        self.woken = False  # data or an end arrived for the pending read, which has not resumed yet
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport: Any) -> None:
        """Keep the transport (called again with the TLS transport's protocol after start_tls)."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Buffer and wake the reader; pause the socket when a peer floods us."""
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        """The peer half-closed: reads end, but we may still write (as asyncio streams do)."""
        self.eof = True
        self._wake()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone: reads end with ``exc``, if any, once the buffer is consumed."""
        self.eof = self.lost = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
                self.woken = True

    async def wait(self) -> None:
        """Until more data, the end of the stream or the loss of the connection."""
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        self.woken = False  # not on cancellation: answer_waiting() must still see it

    def consumed(self) -> None:
        """Resume a paused socket once the buffer has drained below the high-water mark."""
        if self.paused and len(self.buffer) <= HIGH_WATER // 2:
            self.paused = False
            self.transport.resume_reading()


def _unread(fd: int) -> int:
    """Bytes the kernel holds for ``fd`` that nobody has read yet (FIONREAD)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]


def _connected(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has completed successfully (writable, no pending error)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(0)) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


@functools.lru_cache(maxsize=4096)
def _is_ip(address: str) -> bool:
    """Whether ``address`` is an address literal (cached: every check of a server asks again)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


class Dialogue:
    """The connection a checker talks over, and the step it is at."""

    def __init__(self, label: str, address: str, port: int, mark: int | None = None, source: str | None = None):
        self.label = label  # the check type, first word of every reason
        self.address = address
        self.port = port
        self.mark = mark
        self.source = source  # local address to connect from (checks through the VIP)
        self.step = "connect"
        self.decided = False  # the verdict is in; later steps (QUIT, LOGOUT) cannot fail the check
        self.note = ""  # appended to an ok reason, e.g. "QUIT answered 421"
        self.done: list[str] = []  # steps completed, listed in an ok reason
        self.conn: _Connection | None = None
        self.transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None  # ours until a transport owns it
        self.tls_context: ssl.SSLContext | None = None  # set by run_check for checks that speak TLS
        self.server_name: str | None = None  # SNI and the name verified, if any

    def did(self, *steps: str) -> None:
        """Record completed steps (an ok reason lists them)."""
        self.done.extend(steps)

    @property
    def peer(self) -> str:
        """The peer as reasons name it."""
        return hostport(self.address, self.port)

    async def connect(self) -> None:
        """Open the TCP connection (with ``SO_MARK`` when given, for checks routed through the VIP)."""
        self.step = "connect"
        loop = asyncio.get_running_loop()
        conn = self.conn = _Connection()
        if self.mark is None and self.source is None and not _is_ip(self.address):
            self.transport, _ = await loop.create_connection(lambda: conn, self.address, self.port)
            return
        # A socket of our own: SO_MARK and bind for checks through the VIP, and, should the deadline
        # expire while connecting, a way to tell a server that never answered from a loop that was
        # too busy to notice it had (answer_waiting).
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = self._sock = socket.socket(family, socket.SOCK_STREAM)
        if self.mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)  # needs CAP_NET_ADMIN
        if self.source:
            sock.bind((self.source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (self.address, self.port))
        self.transport, _ = await loop.create_connection(lambda: conn, sock=sock)
        self._sock = None  # the transport closes it from now on

    async def start_tls(self) -> None:
        """TLS handshake on the open connection (implicit TLS, or after STARTTLS/STLS was accepted)."""
        self.step = "TLS handshake"
        # Bytes the peer sent after accepting STARTTLS but before the handshake would
        # be read as if they came over TLS: the injection of RFC 3207 section 6 / CVE-2011-0411.
        if self.conn.buffer:
            raise CheckFailed("plaintext data after the TLS go-ahead (possible STARTTLS injection)")
        loop = asyncio.get_running_loop()
        plain = self.transport
        self.transport = await loop.start_tls(plain, self.conn, self.tls_context, server_hostname=self.server_name)
        if self.transport is None:  # the peer closed during the handshake
            raise ConnectionResetError("connection closed during the TLS handshake")

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted now."""
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is not None

    async def send(self, data: str | bytes) -> None:
        """Write (callers pass whole commands with CRLF); a lost connection raises, as a stream's drain would."""
        conn = self.conn
        if conn.lost:
            raise conn.error if conn.error is not None else ConnectionResetError("Connection lost")
        self.transport.write(data.encode() if isinstance(data, str) else data)

    def _ended(self, waiting_for: str) -> Exception:
        """What a read that hit the end of the connection raises."""
        if self.conn.error is not None:
            return self.conn.error
        return CheckFailed(f"connection closed by peer waiting for {waiting_for}")

    async def read_line(self, waiting_for: str) -> str:
        """One CRLF-terminated line, without its terminator."""
        self.step = waiting_for
        conn = self.conn
        buf = conn.buffer
        scanned = 0
        while True:
            end = buf.find(b"\n", scanned)
            if end >= 0:
                if end > LINE_LIMIT:
                    break
                line = bytes(buf[:end + 1])
                del buf[:end + 1]
                conn.consumed()
                return line.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(buf) > LINE_LIMIT:
                break
            if conn.eof:
                raise self._ended(waiting_for)
            scanned = len(buf)
            await conn.wait()
        raise CheckFailed(f"line longer than {LINE_LIMIT} bytes waiting for {waiting_for}")

    async def read_exactly(self, n: int, waiting_for: str) -> bytes:
        """Exactly ``n`` bytes (an IMAP literal, an HTTP body)."""
        self.step = waiting_for
        conn = self.conn
        while len(conn.buffer) < n:
            if conn.eof:
                raise self._ended(waiting_for)
            if conn.paused:  # n is beyond the high-water mark: let the socket fill the buffer
                conn.paused = False
                conn.transport.resume_reading()
            await conn.wait()
        data = bytes(conn.buffer[:n])
        del conn.buffer[:n]
        conn.consumed()
        return data

    async def read_some(self, n: int, waiting_for: str) -> bytes:
        """Up to ``n`` bytes as they come; ``b""`` once the peer has closed."""
        self.step = waiting_for
        conn = self.conn
        while not conn.buffer:
            if conn.eof:
                if conn.error is not None:
                    raise conn.error
                return b""
            await conn.wait()
        data = bytes(conn.buffer[:n])
        del conn.buffer[:n]
        conn.consumed()
        return data

    async def read_smtp_reply(self, waiting_for: str) -> tuple[int, list[str]]:
        """A whole SMTP reply: ``NNN-text`` continuation lines up to ``NNN text`` (RFC 5321 section 4.2.1).

        Every line must carry the same code; the texts are returned in order.
        keepalived reads one line only, so ``220-`` greetings fail there.
        """
        code = None
        texts: list[str] = []
        for _ in range(MAX_REPLY_LINES):
            line = await self.read_line(waiting_for)
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                raise CheckFailed(f"not an SMTP reply waiting for {waiting_for}: {clip(line)!r}")
            if code is None:
                code = int(line[:3])
            elif int(line[:3]) != code:
                raise CheckFailed(f"reply code changed from {code} to {line[:3]} within one reply "
                                  f"waiting for {waiting_for}")
            texts.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return code, texts
        raise CheckFailed(f"more than {MAX_REPLY_LINES} lines waiting for {waiting_for}")

    def answer_waiting(self) -> bool:
        """Whether the peer's answer is here but unread: the check ran out of time on us, not on the server.

        Asked when the deadline expires. True when the pending read was woken
        but had not resumed, when the kernel holds unread bytes for the socket,
        or when the connect has completed unnoticed: then an overloaded or
        stalled event loop, not the server, missed the deadline.
        """
        conn = self.conn
        if conn is None:
            return False
        if conn.woken:
            return True
        try:
            if self._sock is not None:  # still connecting
                return _connected(self._sock)
            sock = self.transport.get_extra_info("socket") if self.transport is not None else None
            return sock is not None and _unread(sock.fileno()) > 0
        except (OSError, ValueError):  # closed meanwhile: nothing waiting
            return False

    def close(self) -> None:
        """Drop the connection at once (the verdict is in, or the check was cancelled or timed out)."""
        if self.transport is not None:
            self.transport.abort()
        if self._sock is not None:  # cancelled or failed before a transport took the socket over
            self._sock.close()
            self._sock = None
