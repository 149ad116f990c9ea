"""One connection of one check: the step it waits for, line and reply reading, TLS upgrade.

Checkers are linear coroutines; this class keeps what they share so each one
reads as the protocol's dialogue. ``step`` always names what the checker is
waiting for, so a timeout or a dropped connection is reported as
``timeout after 2.0 s waiting for greeting`` without per-call bookkeeping.

Under the dialogue is a non-blocking socket watched by the check driver
(``lvsmail.health.driver``), not an asyncio transport: a check is a handful of
short lines, and a transport costs more than the dialogue itself (a 256 KiB
receive buffer allocated and freed per read, address look-ups and extra
callbacks per connection). A read that must wait parks the checker's
coroutine; the socket's readiness resumes it directly. TLS runs in memory
(``ssl.SSLObject`` over two ``MemoryBIO``s) on the same socket, so plain and
TLS connections share one read and one write path. The checker still reads as
a linear dialogue (``await dlg.read_smtp_reply(...)``); only the plumbing
under it changed. A dialogue runs only in a coroutine the driver steps.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import functools
import ipaddress
import os
import select
import socket
import ssl
import termios

from lvsmail.health.checkers.replies import (  # noqa: F401 (CheckFailed, clip and the limits are used from here)
    LINE_LIMIT,
    MAX_REPLY_BYTES,
    MAX_REPLY_LINES,
    CheckFailed,
    ReplyError,
    clip,
    parse_smtp_reply,
    scan_smtp_reply,
)
from lvsmail.health.driver import PARK, Job, current_job

#: Buffered bytes above which reading from the peer pauses until the checker consumes them
#: (a peer that floods cannot grow our memory beyond this before the check's deadline).
HIGH_WATER = 4 * LINE_LIMIT
#: Bytes asked of the kernel per read: a whole reply of any check fits, and the buffer stays below
#: the allocator's mmap threshold (a larger one, as asyncio's 256 KiB, costs three syscalls per read).
RECV_SIZE = 65536
#: Most bytes one check reads from its peer (TLS records included). A check's dialogue is a few KB; this
#: stops a peer that floods within the deadline (endless untagged IMAP lines, literals to skip) from
#: keeping a checker reading for the whole timeout. Memory is bounded by HIGH_WATER, not by this.
MAX_CHECK_BYTES = 4 * 1024 * 1024


#: Errors only a TCP handshake ends with: seen by the first read of a connection opened for a greeting,
#: they are reported as the connect's. A reset before the first byte is the greeting's.
HANDSHAKE_ERRORS = frozenset({errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                              errno.EHOSTDOWN})


@functools.lru_cache(maxsize=4096)
def hostport(address: str, port: int) -> str:
    """``a:p`` for IPv4, ``[a]:p`` for IPv6."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


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
        self.tls_context: ssl.SSLContext | None = None  # set by run_check for checks that speak TLS
        self.server_name: str | None = None  # SNI and the name verified, if any
        self.job: Job | None = None  # the driver's job running the checker (set at connect)
        self.sock: socket.socket | None = None  # ours from connect() to close()
        self.connected = False  # the TCP handshake completed and the loop noticed
        self.connecting = False  # opened for a greeting: the handshake's end is learnt from the first read
        self.buffer = bytearray()  # received (and decrypted) bytes not yet consumed
        self.received = 0  # bytes read from the socket so far (MAX_CHECK_BYTES)
        self.eof = False  # the peer closed its side (or the connection is gone): reads end once the buffer is used
        self.lost = False  # the connection is gone altogether
        self.error: BaseException | None = None  # why it was lost, if by an error
        self.paused = False  # reading stopped until the checker consumes the buffer (a flooding peer)
        self._parked = False  # the checker waits for data, an end, or the handshake's end
        self._reading = False  # watched for reading
        self._handshaking = False  # watched for writability: the end of the TCP handshake
        self._unsent = bytearray()  # bytes the kernel did not take yet (written when the socket is writable)
        self._tls: ssl.SSLObject | None = None
        self._tls_in: ssl.MemoryBIO | None = None
        self._tls_out: ssl.MemoryBIO | None = None
        self._handshaken = False

    def did(self, *steps: str) -> None:
        """Record completed steps (an ok reason lists them)."""
        self.done.extend(steps)

    @property
    def peer(self) -> str:
        """The peer as reasons name it."""
        return hostport(self.address, self.port)

    async def connect(self, greeting_first: bool = False) -> None:
        """Open the TCP connection (with ``SO_MARK`` when given, for checks routed through the VIP).

        ``greeting_first``: the server speaks first (SMTP, IMAP and POP3 in
        plain text), so return while the handshake is under way and learn its
        outcome from the first read: the greeting, or the refusal or reset as
        that read's error. That saves a wake-up of the loop and three system
        calls per check (bench/RESULTS.md); a failure is still reported as the
        connect's (``connect: connection refused``) and a deadline that expires
        before the handshake ends as ``waiting for connect`` (``timed_out``).
        """
        self.step = "connect"
        self.job = current_job()
        if self.mark is None and self.source is None and not _is_ip(self.address):
            # A name: each of its addresses in turn, as asyncio's create_connection does.
            infos = await asyncio.get_running_loop().getaddrinfo(self.address, self.port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            errors: list[OSError] = []
            for family, _, _, _, sockaddr in infos:
                try:
                    await self._connect_to(family, sockaddr, False)
                    return
                except OSError as exc:
                    errors.append(exc)
                    self.close()
            if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
                raise errors[0]
            raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        await self._connect_to(family, (self.address, self.port), greeting_first)

    async def _connect_to(self, family: int, sockaddr: tuple, greeting_first: bool) -> None:
        """Connect a new socket to one address; on return it is watched for reading (and, when
        ``greeting_first``, possibly still connecting)."""
        sock = self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.connected = False
        if self.mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)  # needs CAP_NET_ADMIN
        if self.source:
            sock.bind((self.source, 0))
        err = sock.connect_ex(sockaddr)  # an errno, not an exception: the usual EINPROGRESS costs less
        if err in (errno.EINPROGRESS, errno.EINTR):
            if greeting_first:
                self.connecting = True
                self._start_reading()
                return
            await self._handshake()
        elif err:
            raise OSError(err, os.strerror(err))
        self.connected = True
        self._start_reading()

    async def _handshake(self) -> None:
        """Wait until the TCP handshake under way ends; OSError if it failed. Should the deadline expire
        meanwhile, answer_waiting() tells a server that never answered from a director that was too busy
        to notice it had."""
        self._handshaking = True
        self._listen()
        try:
            await self._wait()
        finally:
            self._handshaking = False
            self._listen()
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"Connect call failed {self.peer}")

    async def _connected_now(self) -> None:
        """Before writing on a connection opened for a greeting: its handshake must have ended."""
        if self.connecting and not self.lost:
            await self._handshake()
            self.connecting, self.connected = False, True

    def _listen(self) -> None:
        """Tell the driver what this socket waits for now: data, writability (unsent bytes or the
        handshake's end), or nothing."""
        self.job.driver.listen(self.sock.fileno(), self, self._reading,
                               self._handshaking or bool(self._unsent))

    def _start_reading(self) -> None:
        if not self._reading and not self.lost:
            self._reading = True
            self._listen()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._listen()

    def _readable(self) -> None:
        """The driver's callback: take what the kernel has, decrypt it if TLS, wake the pending read."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if self.connecting:  # bytes came: the handshake of a connection opened for a greeting is done
            self.connecting, self.connected = False, True
        self.received += len(data)
        if self.received > MAX_CHECK_BYTES:  # a flood: what is buffered is still read, then this ends reads
            self._lose(CheckFailed(f"more than {MAX_CHECK_BYTES} bytes from the peer waiting for {self.step}"))
            return
        if not data:  # the peer half-closed: reads end, but we may still write (as asyncio streams do)
            self.eof = True
            self._stop_reading()
        elif self._tls is None:
            self.buffer += data
        else:
            self._tls_in.write(data)
            if self._handshaken:
                self._decrypt()
        if len(self.buffer) > HIGH_WATER and not self.paused:  # a peer that floods us: stop reading
            self.paused = True
            self._stop_reading()
        self._wake()

    def _decrypt(self) -> None:
        """Move the application data of complete TLS records into the buffer."""
        tls = self._tls
        try:
            while True:
                data = tls.read(RECV_SIZE)
                if not data:  # close_notify: the peer ended TLS, an end of stream
                    self.eof = True
                    self._stop_reading()
                    break
                self.buffer += data
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:  # close_notify, as some OpenSSL versions report it
            self.eof = True
            self._stop_reading()
        except ssl.SSLError as exc:
            self._lose(exc)
        self._flush_tls()  # TLS 1.3 answers some records (key update) on its own

    def _lose(self, exc: BaseException) -> None:
        """The connection is gone: reads end with ``exc`` once the buffer is consumed."""
        if not self.lost:
            self.error = exc
        self.eof = self.lost = True
        self._reading = False
        self._unsent.clear()
        self._listen()
        self._wake()

    def _wake(self) -> None:
        """Resume the checker if it waits (called from the driver's callbacks)."""
        if self._parked:
            self._parked = False
            self.job.resume()

    async def _wait(self) -> None:
        """Until ``_wake``: more data, the end of the stream, the loss of the connection, or the end of
        the handshake. Every read that waits parks here directly: each level of an await chain is
        walked again on every resume."""
        if self.paused:
            self.paused = False
            self._start_reading()
        self._parked = True
        try:
            await PARK
        finally:
            self._parked = False

    def _consumed(self) -> None:
        """Resume a paused socket once the buffer has drained below the high-water mark."""
        if self.paused and len(self.buffer) <= HIGH_WATER // 2:
            self.paused = False
            self._start_reading()

    def _write(self, data: bytes) -> None:
        """Hand bytes to the kernel; what it does not take now is written when the socket is writable."""
        if self._unsent:
            self._unsent += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:  # the next read reports it, as a transport would
            self._lose(exc)
            return
        if sent < len(data):
            self._unsent += data[sent:]
            self._listen()

    def _writable(self) -> None:
        """The driver's callback: the handshake has ended, or the kernel takes more of the unsent bytes."""
        if self._handshaking:
            self._handshaking = False
            self._listen()
            self._wake()
            return
        try:
            sent = self.sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._listen()

    def _flush_tls(self) -> None:
        """Send what the TLS engine has produced."""
        if self._tls_out.pending:
            self._write(self._tls_out.read())

    async def start_tls(self) -> None:
        """TLS handshake on the open connection (implicit TLS, or after STARTTLS/STLS was accepted)."""
        await self._connected_now()
        self.step = "TLS handshake"
        # Bytes the peer sent after accepting STARTTLS but before the handshake would
        # be read as if they came over TLS: the injection of RFC 3207 section 6 / CVE-2011-0411.
        if self.buffer:
            raise CheckFailed("plaintext data after the TLS go-ahead (possible STARTTLS injection)")
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._tls = self.tls_context.wrap_bio(self._tls_in, self._tls_out, server_hostname=self.server_name)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                # Wanting more bytes is the handshake's flow control, not the cause of the loss: from None.
                self._flush_tls()
                if self.eof:
                    if self.error is not None:
                        raise self.error from None
                    raise ConnectionResetError("connection closed during the TLS handshake") from None
                await self._wait()
        self._handshaken = True
        self._flush_tls()
        self._decrypt()  # application data that came with the peer's last handshake flight

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted now."""
        return self._handshaken

    async def send(self, data: str | bytes) -> None:
        """Write (callers pass whole commands with CRLF); a lost connection raises, as a stream's drain would."""
        await self._connected_now()
        if self.lost:
            raise self.error if self.error is not None else ConnectionResetError("Connection lost")
        data = data.encode() if isinstance(data, str) else data
        if self._tls is None:
            self._write(data)
        else:
            self._tls.write(data)
            self._flush_tls()

    def _ended(self, waiting_for: str) -> Exception:
        """What a read that hit the end of the connection raises (a connection opened for a greeting
        that failed before any byte came failed at its connect: refused, unreachable, timed out)."""
        if self.error is not None:
            if self.connecting and getattr(self.error, "errno", None) in HANDSHAKE_ERRORS:
                self.step = "connect"
            return self.error
        return CheckFailed(f"connection closed by peer waiting for {waiting_for}")

    async def read_line(self, waiting_for: str) -> str:
        """One CRLF-terminated line, without its terminator."""
        self.step = waiting_for
        buf = self.buffer
        scanned = 0
        while True:
            end = buf.find(b"\n", scanned)
            if end >= 0:
                if end > LINE_LIMIT:
                    break
                line = bytes(buf[:end + 1])
                del buf[:end + 1]
                self._consumed()
                return line.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(buf) > LINE_LIMIT:
                break
            if self.eof:
                raise self._ended(waiting_for)
            scanned = len(buf)
            await self._wait()
        raise CheckFailed(f"line longer than {LINE_LIMIT} bytes waiting for {waiting_for}")

    async def read_exactly(self, n: int, waiting_for: str) -> bytes:
        """Exactly ``n`` bytes (an IMAP literal, an HTTP body)."""
        self.step = waiting_for
        while len(self.buffer) < n:
            if self.eof:
                raise self._ended(waiting_for)
            if self.paused:  # n is beyond the high-water mark: let the socket fill the buffer
                self.paused = False
                self._start_reading()
            await self._wait()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        self._consumed()
        return data

    async def skip(self, n: int, waiting_for: str) -> None:
        """Read and drop ``n`` bytes (an IMAP literal nobody looks at): never more than HIGH_WATER held."""
        self.step = waiting_for
        while n:
            take = min(n, len(self.buffer))
            if take:
                del self.buffer[:take]
                n -= take
                self._consumed()
                continue
            if self.eof:
                raise self._ended(waiting_for)
            await self._wait()

    async def read_some(self, n: int, waiting_for: str) -> bytes:
        """Up to ``n`` bytes as they come; ``b""`` once the peer has closed."""
        self.step = waiting_for
        while not self.buffer:
            if self.eof:
                if self.error is not None:
                    raise self.error
                return b""
            await self._wait()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        self._consumed()
        return data

    async def read_smtp_reply(self, waiting_for: str) -> tuple[int, list[str]]:
        """A whole SMTP reply: ``NNN-text`` continuation lines up to ``NNN text`` (RFC 5321 section 4.2.1).

        Every line must carry the same code; the texts are returned in order.
        keepalived reads one line only, so ``220-`` greetings fail there.
        The buffer is scanned for the reply's last line first and the reply
        parsed in one pass (not a ``read_line`` per line: an EHLO reply has a
        dozen, and each await costs a coroutine). A line that cannot be part
        of a reply ends the scan, so junk fails at once instead of timing out.
        The scan holds the reply to LINE_LIMIT, MAX_REPLY_LINES and MAX_REPLY_BYTES.
        """
        self.step = waiting_for
        start = lines = 0  # the scan: where the next line starts, lines seen
        try:
            while True:
                complete, start, lines = scan_smtp_reply(self.buffer, start, lines)
                if complete:
                    break
                if self.eof:
                    raise self._ended(waiting_for)
                await self._wait()
            block = bytes(self.buffer[:start])
            del self.buffer[:start]
            self._consumed()
            return parse_smtp_reply(block)
        except ReplyError as exc:
            raise exc.waiting(waiting_for) from None

    def timed_out(self) -> bool:
        """The check's deadline expired: settle the step it expired at, and tell whether we were late.

        A connection opened for a greeting whose handshake has not ended
        expired waiting for its connect, not for the greeting.
        """
        if self.connecting and self.sock is not None and not self._handshake_done():
            self.step = "connect"
        return self.answer_waiting()

    def _handshake_done(self) -> bool:
        try:
            return _connected(self.sock)
        except (OSError, ValueError):  # closed meanwhile
            return False

    def answer_waiting(self) -> bool:
        """Whether the peer's answer is here but unread: the check ran out of time on us, not on the server.

        Asked when the deadline expires. True when the kernel holds unread
        bytes for the socket, or when the connect has completed unnoticed: then
        an overloaded or stalled director, not the server, missed the deadline.
        """
        if self.sock is None:
            return False
        try:
            if not self.connected and not self.connecting:
                return _connected(self.sock)
            return _unread(self.sock.fileno()) > 0
        except (OSError, ValueError):  # closed meanwhile: nothing waiting
            return False

    def close(self) -> None:
        """Drop the connection at once (the verdict is in, or the check was cancelled or timed out)."""
        sock = self.sock
        if sock is None or sock.fileno() < 0:
            return
        if self.job is not None:
            self.job.driver.listen(sock.fileno(), self, False, False)
        self._reading = self._handshaking = False
        self._unsent.clear()
        sock.close()
