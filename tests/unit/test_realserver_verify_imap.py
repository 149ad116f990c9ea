"""realserver verify's IMAP steps with the standard library's client, against a scripted IMAP peer on 127.0.0.1.

The peer answers each command as an IMAP server would (RFC 9051) and records
what the client sent, so each test names one situation: the message found,
fetched and deleted; the login refused; the message never arriving; no server.
The SMTP step goes to an aiosmtpd sink that accepts everything. Debian's
python3 has no imapclient: none of this may need it.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading

import pytest

from lvsmail.health.credentials import Credentials
from lvsmail.realserver.verify import run_verify

PASSWORD = "s3cret-Verify"
CREDS = Credentials("probe@example.org", PASSWORD)
MAILBOX = "probe@example.org"


class ImapPeer(socketserver.ThreadingTCPServer):
    """A one-mailbox IMAP server: ``login_reply`` answers LOGIN; the message exists after ``arrive_after`` searches."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, login_reply: str = "OK LOGIN completed", arrive_after: int | None = 1):
        super().__init__(("127.0.0.1", 0), _Session)
        self.login_reply = login_reply
        self.arrive_after = arrive_after
        self.commands: list[str] = []
        self.searches = 0
        self.token = ""
        self.deleted = False
        self.expunged = False

    @property
    def port(self) -> int:
        """The ephemeral port it listens on."""
        return self.server_address[1]

    def message(self) -> bytes:
        """The delivered message as the store would hold it (it carries the token the client searched for)."""
        return (f"Subject: lvsmail verify {self.token}\r\nTo: {MAILBOX}\r\n\r\n"
                f"lvsmail realserver verify, token {self.token}\r\n").encode()


class _Session(socketserver.StreamRequestHandler):
    """One connection: greeting, then each command answered in turn."""

    def handle(self) -> None:
        peer: ImapPeer = self.server
        self.wfile.write(b"* OK [CAPABILITY IMAP4rev1] scripted peer ready\r\n")
        while line := self.rfile.readline():
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            verb, _, args = rest.partition(" ")
            verb = verb.upper()
            peer.commands.append(verb if verb != "LOGIN" else "LOGIN <credentials>")
            if verb == "CAPABILITY":
                self.send(b"* CAPABILITY IMAP4rev1", tag, "OK CAPABILITY completed")
            elif verb == "LOGIN":
                # A careless server that echoes the password: the report must still hide it.
                self.send(b"", tag, peer.login_reply.replace("{args}", args))
            elif verb == "SELECT":
                exists = int(self.present())
                self.send(f"* {exists} EXISTS\r\n* FLAGS (\\Deleted \\Seen)".encode(), tag,
                          "OK [READ-WRITE] SELECT done")
            elif verb == "SEARCH":
                peer.searches += 1
                peer.token = args.split()[-1]
                self.send(b"* SEARCH 1" if self.present() else b"* SEARCH", tag, "OK SEARCH completed")
            elif verb == "FETCH":
                body = peer.message()
                self.send(b"* 1 FETCH (BODY[] {%d}\r\n%s)" % (len(body), body), tag, "OK FETCH completed")
            elif verb == "STORE":
                peer.deleted = "\\Deleted" in args
                self.send(b"", tag, "OK STORE completed")
            elif verb == "EXPUNGE":
                peer.expunged = peer.deleted
                self.send(b"* 1 EXPUNGE" if peer.deleted else b"", tag, "OK EXPUNGE completed")
            elif verb == "LOGOUT":
                self.send(b"* BYE logging out", tag, "OK LOGOUT completed")
                return
            else:
                self.send(b"", tag, "BAD unknown command")

    def present(self) -> bool:
        """Whether the message has arrived by now."""
        peer: ImapPeer = self.server
        return peer.arrive_after is not None and peer.searches >= peer.arrive_after

    def send(self, untagged: bytes, tag: str, tagged: str) -> None:
        """Untagged lines (if any), then the tagged completion."""
        self.wfile.write((untagged + b"\r\n" if untagged else b"") + f"{tag} {tagged}\r\n".encode())


@pytest.fixture
def smtp_sink():
    """An SMTP server on 127.0.0.1 that accepts every message: (host, port)."""
    pytest.importorskip("aiosmtpd")
    from aiosmtpd.controller import Controller

    class Accept:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            return "250 2.0.0 Ok: queued as SINK1"

    with socket.socket() as s:  # a port that was free a moment ago (the controller probes its own port)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    yield ("127.0.0.1", port)
    controller.stop()


@pytest.fixture
def imap_peer(request):
    """A running ImapPeer, built with the keyword arguments a test passes as its (indirect) parameter."""
    peer = ImapPeer(**getattr(request, "param", {}))
    thread = threading.Thread(target=peer.serve_forever, daemon=True)
    thread.start()
    yield peer
    peer.shutdown()
    peer.server_close()


def test_needs_no_imapclient(smtp_sink, imap_peer, monkeypatch):
    monkeypatch.setitem(sys.modules, "imapclient", None)  # import imapclient now raises ImportError
    report = run_verify(smtp_sink, ("127.0.0.1", imap_peer.port), MAILBOX, CREDS, timeout=5)
    assert report.ok, "\n".join(s.line() for s in report.steps)


def test_message_found_fetched_and_deleted(smtp_sink, imap_peer):
    report = run_verify(smtp_sink, ("127.0.0.1", imap_peer.port), MAILBOX, CREDS, timeout=5)
    assert report.ok, "\n".join(s.line() for s in report.steps)
    names = [s.name for s in report.steps]
    imap = f"imap 127.0.0.1:{imap_peer.port}"
    assert names == [f"smtp deliver {smtp_sink[0]}:{smtp_sink[1]}", f"{imap} login", f"{imap} wait for message",
                     f"{imap} fetch", f"{imap} delete"]
    assert report.steps[0].detail.startswith("250 ") and "SINK1" in report.steps[0].detail
    assert len(imap_peer.token) == 16  # the search named the message by its random token
    assert report.steps[3].detail == f"{len(imap_peer.message())} bytes"
    assert imap_peer.deleted and imap_peer.expunged
    assert imap_peer.commands[-1] == "LOGOUT"


@pytest.mark.parametrize("imap_peer", [{"login_reply": "NO [AUTHENTICATIONFAILED] no such user or password {args}"}],
                         indirect=True)
def test_refused_login_names_the_step_and_hides_the_password(smtp_sink, imap_peer):
    report = run_verify(smtp_sink, ("127.0.0.1", imap_peer.port), MAILBOX, CREDS, timeout=5)
    assert not report.ok
    step = report.steps[-1]
    assert step.name == f"imap 127.0.0.1:{imap_peer.port} login" and not step.ok
    assert "AUTHENTICATIONFAILED" in step.detail
    assert PASSWORD not in step.detail and "<hidden>" in step.detail
    assert "SELECT" not in imap_peer.commands and imap_peer.commands[-1] == "LOGOUT"


@pytest.mark.parametrize("imap_peer", [{"arrive_after": None}], indirect=True)
def test_message_that_never_arrives_is_explained(smtp_sink, imap_peer):
    report = run_verify(smtp_sink, ("127.0.0.1", imap_peer.port), MAILBOX, CREDS, timeout=0.6)
    step = report.steps[-1]
    assert not report.ok and step.name.endswith("wait for message") and not step.ok
    assert step.detail.startswith("not in INBOX after 0.6 s")
    assert "mail_location" in step.detail and "mailq" in step.detail
    assert imap_peer.searches >= 2  # it polled, and gave up at the deadline
    assert "STORE" not in imap_peer.commands


def test_no_imap_server_is_explained(smtp_sink):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        report = run_verify(smtp_sink, ("127.0.0.1", port), MAILBOX, CREDS, timeout=2)
    step = report.steps[-1]
    assert step.name == f"imap 127.0.0.1:{port} login" and not step.ok
    assert step.detail.startswith("cannot connect: ConnectionRefusedError")
