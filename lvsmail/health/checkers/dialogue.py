"""One connection of one check: the step it waits for, line and reply reading, TLS upgrade.

Checkers are linear coroutines; this class keeps what they share so each one
reads as the protocol's dialogue. ``step`` always names what the checker is
waiting for, so a timeout or a dropped connection is reported as
``timeout after 2.0 s waiting for greeting`` without per-call bookkeeping.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl

#: Longest line accepted (RFC 5321 section 4.5.3.1.5 allows 512 octets for an SMTP reply line;
#: HTTP header and IMAP lines may be longer, and we only need to bound memory).
LINE_LIMIT = 16384
#: Most lines in one multi-line reply (an EHLO reply has a dozen; a greeting a few).
MAX_REPLY_LINES = 200


class CheckFailed(Exception):
    """The peer answered in a way that fails the check; the message is the tail of the reason."""


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
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
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
        if self.mark is None:
            self.reader, self.writer = await asyncio.open_connection(self.address, self.port, limit=LINE_LIMIT)
            return
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)  # needs CAP_NET_ADMIN
            if self.source:
                sock.bind((self.source, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (self.address, self.port))
        except BaseException:
            sock.close()
            raise
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=LINE_LIMIT)

    async def start_tls(self) -> None:
        """TLS handshake on the open connection (implicit TLS, or after STARTTLS/STLS was accepted)."""
        self.step = "TLS handshake"
        # Bytes the peer sent after accepting STARTTLS but before the handshake would
        # be read as if they came over TLS: the injection of RFC 3207 section 6 / CVE-2011-0411.
        if self.reader is not None and self.reader._buffer:  # noqa: SLF001 (no public accessor)
            raise CheckFailed("plaintext data after the TLS go-ahead (possible STARTTLS injection)")
        await self.writer.start_tls(self.tls_context, server_hostname=self.server_name)

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted now."""
        return self.writer is not None and self.writer.get_extra_info("sslcontext") is not None

    async def send(self, data: str | bytes) -> None:
        """Write and flush (callers pass whole commands with CRLF)."""
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def read_line(self, waiting_for: str) -> str:
        """One CRLF-terminated line, without its terminator."""
        self.step = waiting_for
        try:
            line = await self.reader.readline()
        except ValueError:  # asyncio's "separator is not found, and chunk exceed the limit"
            raise CheckFailed(f"line longer than {LINE_LIMIT} bytes waiting for {waiting_for}") from None
        if not line.endswith(b"\n"):
            raise CheckFailed(f"connection closed by peer waiting for {waiting_for}")
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    async def read_exactly(self, n: int, waiting_for: str) -> bytes:
        """Exactly ``n`` bytes (an IMAP literal, an HTTP body)."""
        self.step = waiting_for
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise CheckFailed(f"connection closed by peer waiting for {waiting_for}") from None

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

    def close(self) -> None:
        """Drop the connection at once (the verdict is in, or the check was cancelled or timed out)."""
        if self.writer is not None:
            self.writer.transport.abort()
