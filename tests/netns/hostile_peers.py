"""Hostile real servers for checker tests: each a behaviour run on every connection of a loopback listener.

A ``HostilePeer`` runs in its own threads with blocking sockets, so a peer that
floods keeps flooding however busy the checker's event loop is, and it stops
as soon as the checker closes the connection (or the peer is closed). Each
``CASES`` entry is one abuse: the check type, what the peer does, and what the
failed check's reason must say. The netns tests and bench/abuse_rss.py share them.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
#: One block a flooding peer writes again and again (allocated once: the peer's memory stays flat).
BLOCK = b"x" * 65536


class Gone(Exception):
    """The checker closed the connection, or the peer is shutting down."""


class Conn:
    """The server's side of one connection, with writes that notice the client leaving."""

    def __init__(self, sock: socket.socket, stop: threading.Event):
        self.sock = sock
        self.stop = stop
        sock.settimeout(0.2)

    def send(self, data: bytes) -> None:
        """Write all of ``data``; Gone once the client has closed or the peer stops."""
        view = memoryview(data)
        while view:
            if self.stop.is_set():
                raise Gone
            try:
                sent = self.sock.send(view)
            except TimeoutError:
                continue
            except OSError as exc:
                raise Gone from exc
            view = view[sent:]

    def forever(self, data: bytes) -> None:
        """Write ``data`` until the client goes."""
        while True:
            self.send(data)

    def drip(self, data: bytes, every: float = 1.0) -> None:
        """One byte of ``data`` every ``every`` seconds (then hold)."""
        for i in range(len(data)):
            self.send(data[i:i + 1])
            self.hold(every)
        self.hold()

    def hold(self, seconds: float = 30.0) -> None:
        """Say nothing for ``seconds`` (reading and dropping whatever the client sends)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stop.is_set():
                raise Gone
            try:
                if not self.sock.recv(4096):
                    raise Gone
            except TimeoutError:
                continue
            except OSError as exc:
                raise Gone from exc

    def line(self) -> bytes:
        """One line from the client (Gone if it closes first)."""
        data = b""
        while not data.endswith(b"\n"):
            if self.stop.is_set():
                raise Gone
            try:
                more = self.sock.recv(1)
            except TimeoutError:
                continue
            except OSError as exc:
                raise Gone from exc
            if not more:
                raise Gone
            data += more
        return data


class HostilePeer:
    """A loopback TCP listener that runs ``behave(conn)`` for each connection, in a thread (``with``)."""

    def __init__(self, behave: Callable[[Conn], None]):
        self.behave = behave
        self.stop = threading.Event()
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []  # a behaviour's own failure (a test bug), not the client's

    def __enter__(self) -> HostilePeer:
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._acceptor.join(5)
        for thread in self.threads:
            thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads = [t for t in self.threads if t.is_alive()]  # a long bench keeps no dead threads
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                self.behave(Conn(sock, self.stop))
            except Gone:
                pass
            except BaseException as exc:  # noqa: BLE001 (kept for the test to assert on)
                self.errors.append(exc)


# -- behaviours ----------------------------------------------------------------------------------------

def endless(prefix: bytes, line: bytes) -> Callable[[Conn], None]:
    """``prefix`` then ``line`` forever (``220-`` greetings, untagged IMAP lines, header fields)."""
    many = line * max(1, len(BLOCK) // len(line))

    def behave(conn: Conn) -> None:
        conn.send(prefix)
        conn.forever(many)
    return behave


def huge_line(prefix: bytes, size: int = 10 * 1024 * 1024) -> Callable[[Conn], None]:
    """``prefix`` then ``size`` bytes without a newline, then silence."""
    def behave(conn: Conn) -> None:
        conn.send(prefix)
        for _ in range(size // len(BLOCK)):
            conn.send(BLOCK)
        conn.hold()
    return behave


def drip(data: bytes) -> Callable[[Conn], None]:
    """``data`` one byte a second."""
    return lambda conn: conn.drip(data)


def say(*replies: bytes) -> Callable[[Conn], None]:
    """The first reply at once, each next one after a line from the client; then hold."""
    def behave(conn: Conn) -> None:
        for i, reply in enumerate(replies):
            if i:
                conn.line()
            conn.send(reply)
        conn.hold()
    return behave


def after_lines(n: int, then: Callable[[Conn], None], *replies: bytes) -> Callable[[Conn], None]:
    """Answer ``replies`` (the first at once, as ``say``), read ``n`` more lines, then behave as ``then``."""
    def behave(conn: Conn) -> None:
        for i, reply in enumerate(replies):
            if i:
                conn.line()
            conn.send(reply)
        for _ in range(n):
            conn.line()
        then(conn)
    return behave


def silent_tls(conn: Conn) -> None:
    """Accept TCP, read the ClientHello, never answer it."""
    conn.hold()


def tls_garbage(conn: Conn) -> None:
    """Answer the ClientHello with bytes that are not a TLS record."""
    conn.sock.settimeout(2)
    try:
        conn.sock.recv(4096)
    except OSError as exc:
        raise Gone from exc
    conn.send(b"SSH-2.0-OpenSSH_9.2\r\n\xff\xfe" + bytes(range(256)))
    conn.hold()


def tls_then(context: ssl.SSLContext, behave: Callable[[Conn], None]) -> Callable[[Conn], None]:
    """Complete a TLS handshake as a server, then behave as ``behave`` over TLS."""
    def wrapped(conn: Conn) -> None:
        conn.sock.settimeout(5)
        try:
            tls = context.wrap_socket(conn.sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            raise Gone from exc
        behave(Conn(tls, conn.stop))
    return wrapped


@dataclass(frozen=True)
class Case:
    """One abuse: a check of ``kind`` against ``behave`` must fail with a reason containing ``expect``."""

    name: str
    kind: str
    behave: Callable[[Conn], None]
    expect: str
    check: dict | None = None  # extra CheckSpec fields

    def spec_fields(self, timeout: float) -> dict:
        """The CheckSpec fields for this case (``verify: false`` for the TLS ones)."""
        fields = {"type": self.kind, "timeout": timeout}
        if self.kind in ("smtps", "imaps", "pop3s", "https"):
            fields["verify"] = False
        fields.update(self.check or {})
        return fields


HTTP_OK = b"HTTP/1.1 200 OK\r\n"
SMTP_EHLO = b"250-mx.example.test\r\n250 STARTTLS\r\n"

#: Every abuse of the issue: SMTP, IMAP, POP3 and HTTP(S), TLS; the expected reason fragment.
CASES: list[Case] = [
    # SMTP (RFC 5321)
    Case("smtp-endless-220-greeting", "smtp", endless(b"", b"220-mx.example.test ESMTP\r\n"),
         "more than 200 lines waiting for greeting"),
    Case("smtp-endless-220-greeting-long-lines", "smtp", endless(b"", b"220-" + b"y" * 4000 + b"\r\n"),
         "reply longer than 65536 bytes waiting for greeting"),
    Case("smtp-10mb-line", "smtp", huge_line(b"220 "), "line longer than 16384 bytes waiting for greeting"),
    Case("smtp-drip", "smtp", drip(b"220 mx.example.test ESMTP ready\r\n"), "timeout after 2.0 s waiting for greeting"),
    Case("smtp-invalid-utf8-code", "smtp", say(b"\xff\xfe\xfd\r\n"),
         "not an SMTP reply waiting for greeting: '\ufffd\ufffd\ufffd'"),
    Case("smtp-invalid-utf8-text", "smtp", say(b"421 \xc3\x28 busy \xed\xa0\x80\r\n"),
         "greeting 421 \ufffd( busy \ufffd\ufffd\ufffd"),
    Case("smtp-superscript-code", "smtp", say("²²⁰ ready\r\n".encode()),
         "not an SMTP reply waiting for greeting"),
    Case("smtp-endless-ehlo-reply", "smtp", after_lines(0, endless(b"", b"250-PIPELINING\r\n"),
                                                         b"220 mx.example.test\r\n", b""),
         "more than 200 lines waiting for reply to EHLO"),
    Case("smtp-starttls-never-handshakes", "smtp",
         say(b"220 mx\r\n", SMTP_EHLO, b"220 go ahead\r\n"), "timeout after 2.0 s waiting for TLS handshake",
         {"tls": "starttls", "verify": False}),
    Case("smtps-silent-tls", "smtps", silent_tls, "timeout after 2.0 s waiting for TLS handshake"),
    Case("smtps-tls-garbage", "smtps", tls_garbage, "TLS handshake failed"),
    # IMAP (RFC 9051)
    Case("imap-10mb-greeting", "imap", huge_line(b"* OK "), "line longer than 16384 bytes waiting for greeting"),
    Case("imap-drip", "imap", drip(b"* OK ready\r\n"), "timeout after 2.0 s waiting for greeting"),
    Case("imap-invalid-utf8-greeting", "imap", say(b"\xff\xfe OK\r\n"), "not an IMAP greeting: '\ufffd\ufffd OK'"),
    Case("imap-endless-untagged", "imap", after_lines(0, endless(b"", b"* OK x\r\n"), b"* OK ready\r\n", b""),
         "more than 1000 lines waiting for reply to CAPABILITY"),
    Case("imap-endless-untagged-long", "imap",
         after_lines(0, endless(b"", b"* OK " + b"z" * 1000 + b"\r\n"), b"* OK ready\r\n", b""),
         "response longer than 65536 bytes waiting for reply to CAPABILITY"),
    Case("imap-endless-literals", "imap",
         after_lines(0, endless(b"", b"* 1 FETCH (BODY[] {65536}\r\n" + BLOCK + b")\r\n"), b"* OK ready\r\n", b""),
         "more than 4194304 bytes from the peer waiting for reply to CAPABILITY"),
    Case("imap-literal-of-huge-digits", "imap", say(b"* OK ready\r\n", b"* X {" + b"9" * 5000 + b"}\r\ngarbage\r\n"),
         "unexpected line waiting for reply to CAPABILITY: 'garbage'"),
    Case("imaps-silent-tls", "imaps", silent_tls, "timeout after 2.0 s waiting for TLS handshake"),
    Case("imaps-tls-garbage", "imaps", tls_garbage, "TLS handshake failed"),
    # POP3 (RFC 1939)
    Case("pop3-10mb-greeting", "pop3", huge_line(b"+OK "), "line longer than 16384 bytes waiting for greeting"),
    Case("pop3-drip", "pop3", drip(b"+OK ready\r\n"), "timeout after 2.0 s waiting for greeting"),
    Case("pop3-invalid-utf8-greeting", "pop3", say(b"-ERR \xff\xfe\r\n"), "greeting -ERR \ufffd\ufffd"),
    Case("pop3s-silent-tls", "pop3s", silent_tls, "timeout after 2.0 s waiting for TLS handshake"),
    Case("pop3s-tls-garbage", "pop3s", tls_garbage, "TLS handshake failed"),
    # HTTP (RFC 9112)
    Case("http-endless-headers", "http", endless(HTTP_OK, b"X-Filler: a\r\n"),
         "more than 200 header lines waiting for headers of the response to GET /"),
    Case("http-endless-long-headers", "http", endless(HTTP_OK, b"X-Filler: " + b"a" * 2000 + b"\r\n"),
         "header section longer than 65536 bytes waiting for headers of the response to GET /"),
    Case("http-10mb-status-line", "http", huge_line(b"HTTP/1.1 200 "),
         "line longer than 16384 bytes waiting for response to GET /"),
    Case("http-drip", "http", drip(HTTP_OK + b"\r\n"), "timeout after 2.0 s waiting for response to GET /"),
    Case("http-invalid-utf8-status", "http", say(b"HTTP/1.1 \xff\xfe\xfd OK\r\n\r\n"),
         "GET /: not an HTTP response: 'HTTP/1.1 \ufffd\ufffd\ufffd OK'"),
    Case("http-huge-body", "http", endless(HTTP_OK + b"Content-Length: 10000000000\r\n\r\n", BLOCK),
         "body does not contain 'needle' (65536 bytes read)", {"receive": "needle"}),
    Case("http-endless-chunked-body", "http",
         endless(HTTP_OK + b"Transfer-Encoding: chunked\r\n\r\n", b"10\r\n" + b"c" * 16 + b"\r\n"),
         "body does not contain 'needle' (65536 bytes read)", {"receive": "needle"}),
    Case("http-endless-unframed-body", "http", endless(HTTP_OK + b"\r\n", BLOCK),
         "body does not contain 'needle' (65536 bytes read)", {"receive": "needle"}),
    Case("http-negative-chunk-size", "http", say(HTTP_OK + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n"),
         "bad chunk size waiting for body of the response to GET /: '-1'", {"receive": "needle"}),
    Case("http-negative-content-length", "http", say(HTTP_OK + b"Content-Length: -5\r\n\r\nabcdef"),
         "bad Content-Length waiting for body of the response to GET /: '-5'", {"receive": "needle"}),
    Case("https-silent-tls", "https", silent_tls, "timeout after 2.0 s waiting for TLS handshake"),
    Case("https-tls-garbage", "https", tls_garbage, "TLS handshake failed"),
    Case("https-endless-server-hello", "https", endless(b"\x16\x03\x03\x40\x00\x02\xff\xff\xff", BLOCK),
         "TLS handshake failed"),
]
