"""Health checkers against real and scripted peers on 127.0.0.1 (no IPVS, no namespaces).

Each failure mode has its own test with the expected decision and reason.
Real peers: aiosmtpd (STARTTLS, AUTH) and Python's http.server; scripted peers
(``peers.ScriptedPeer``) for faults no real server produces on demand. Ports
are ephemeral; timeouts are 0.5–2 s so the file stays well under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import ssl
import threading
import time

import pytest
from peers import LOOPBACK, Certificates, Close, Expect, Hold, Pause, ScriptedPeer, Send, StartTLS, refused_port, run

from lvsmail.health import Credentials, CredentialsError, load_credentials, run_check
from lvsmail.health.checkers import cleartext_allowed, seconds
from lvsmail.health.checkers.dialogue import Dialogue
from lvsmail.spec import CheckSpec

SECRET = "pw-S3cret!"
CREDS = Credentials("check@example.test", SECRET)


def spec(kind: str, **kw) -> CheckSpec:
    """A check spec with test-sized timeouts."""
    kw.setdefault("timeout", 2.0)
    return CheckSpec(type=kind, **kw)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A test CA and a certificate for mail.example.test."""
    pytest.importorskip("trustme", reason="pip install trustme (listed in the test extras)")
    return Certificates(tmp_path_factory.mktemp("certs"))


def tls_spec(kind: str, certs: Certificates, **kw) -> CheckSpec:
    """A TLS check that trusts the test CA and checks the certificate's name."""
    kw.setdefault("ca_file", certs.ca_file)
    kw.setdefault("server_name", Certificates.NAME)
    return spec(kind, **kw)


def assert_no_secret(text: str) -> None:
    """No form of the test password may appear."""
    for secret in CREDS.secrets():
        assert secret not in text


# --- SMTP with aiosmtpd --------------------------------------------------------------------------

class _Sink:
    """aiosmtpd handler that remembers the EHLO names it was given."""

    def __init__(self):
        self.helos: list[str] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.helos.append(hostname)
        session.host_name = hostname
        return responses


def _authenticator(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult

    return AuthResult(success=(auth_data.login == CREDS.user.encode()
                               and auth_data.password == CREDS.password.encode()), handled=False)


@contextlib.asynccontextmanager
async def aiosmtpd(*, starttls: ssl.SSLContext | None = None, implicit: ssl.SSLContext | None = None,
                   auth: bool = False):
    """aiosmtpd on 127.0.0.1 in this event loop; yields (port, handler)."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = _Sink()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mx.example.test", ident="test ESMTP", tls_context=starttls,
                     require_starttls=starttls is not None, auth_require_tls=True,
                     authenticator=_authenticator if auth else None, timeout=5, loop=loop),
        LOOPBACK, 0, ssl=implicit)
    try:
        yield server.sockets[0].getsockname()[1], handler
    finally:
        server.close()
        await server.wait_closed()


def test_smtp_aiosmtpd_dialogue_passes():
    async def go():
        async with aiosmtpd() as (port, handler):
            result = await run_check(spec("smtp", helo="director.example.test"), LOOPBACK, port)
        return port, handler, result
    port, handler, result = run(go())
    assert result.ok, result.reason
    assert result.reason == f"smtp 127.0.0.1:{port}: ok: greeting, EHLO, QUIT"
    assert result.step == "done" and 0 < result.latency < 2
    assert handler.helos == ["director.example.test"]


def test_smtp_check_port_overrides_real_server_port():
    async def go():
        async with aiosmtpd() as (port, _):
            return port, await run_check(spec("smtp", port=port), LOOPBACK, 25)
    port, result = run(go())
    assert result.ok and f"127.0.0.1:{port}" in result.reason


def test_smtp_multiline_220_greeting_passes():
    script = [Send(b"220-mx.example.test ESMTP\r\n220-no UCE\r\n220 ready\r\n"), Expect(b"EHLO "),
              Send(b"250-mx.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"), Expect(b"QUIT"),
              Send(b"221 2.0.0 bye\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("smtp"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.ok, result.reason
    assert peer.errors == [] and peer.early == b""


def test_smtp_slow_multiline_greeting_postscreen_style_passes_without_talking_early():
    script = [Send(b"220-mx.example.test ESMTP\r\n"), Pause(0.3), Send(b"220-please wait\r\n"), Pause(0.3),
              Send(b"220 mx.example.test ESMTP\r\n"), Expect(b"EHLO "), Send(b"250 mx.example.test\r\n"),
              Expect(b"QUIT"), Send(b"221 bye\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("smtp", timeout=2.0), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.ok, result.reason
    assert peer.early == b"", "the checker spoke before the greeting was complete"
    assert result.latency >= 0.6


def test_smtp_connection_refused_fails():
    with refused_port() as port:
        result = run(run_check(spec("smtp"), LOOPBACK, port))
    assert not result.ok
    assert result.reason == f"smtp 127.0.0.1:{port}: connect: connection refused"
    assert result.step == "connect"


@pytest.mark.parametrize("kind", ["smtp", "imap", "pop3", "connect"])
def test_a_handshake_that_never_ends_times_out_waiting_for_connect(kind):
    """SMTP, IMAP and POP3 learn the handshake's end from the greeting; a SYN nobody answers is still
    the connect's timeout, not the greeting's. Linux drops a SYN to a listener whose accept queue is full."""
    import socket

    with socket.create_server((LOOPBACK, 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection((LOOPBACK, port)):  # fills the queue of one
            result = run(run_check(spec(kind, timeout=0.5), LOOPBACK, port))
    assert not result.ok and result.expired and not result.inconclusive
    assert result.reason == f"{kind} 127.0.0.1:{port}: timeout after 0.5 s waiting for connect"
    assert result.step == "connect"


def test_a_reset_before_the_greeting_is_the_greeting_s_failure():
    """Accepted, then reset before a byte was sent: the server failed at its greeting, not at the connect."""
    import socket
    import struct

    async def go():
        with socket.create_server((LOOPBACK, 0)) as listener:
            port = listener.getsockname()[1]

            def reset():
                conn, _ = listener.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

            resetter = threading.Thread(target=reset)
            resetter.start()
            result = await run_check(spec("smtp"), LOOPBACK, port)
            resetter.join()
            return port, result

    port, result = run(go())
    assert result.reason == f"smtp 127.0.0.1:{port}: connection reset by peer waiting for greeting"
    assert result.step == "greeting"


def test_smtp_accept_then_silence_times_out_and_closes_the_socket():
    async def go():
        async with ScriptedPeer([Hold(5)]) as peer:
            result = await run_check(spec("smtp", timeout=0.5), LOOPBACK, peer.port)
            await asyncio.wait_for(peer.client_closed.wait(), 1.0)  # the checker hung up
            return peer, result
    peer, result = run(go())
    assert not result.ok
    assert result.reason == f"smtp 127.0.0.1:{peer.port}: timeout after 0.5 s waiting for greeting"
    assert result.step == "greeting"
    assert 0.5 <= result.latency < 1.0


def test_smtp_cancelled_check_closes_the_socket():
    async def go():
        async with ScriptedPeer([Hold(5)]) as peer:
            task = asyncio.create_task(run_check(spec("smtp", timeout=5), LOOPBACK, peer.port))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(peer.client_closed.wait(), 1.0)
    run(go())


def test_smtp_421_greeting_fails_with_its_text():
    async def go():
        async with ScriptedPeer([Send(b"421 4.3.2 busy\r\n"), Hold(2)]) as peer:
            return peer, await run_check(spec("smtp"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert not result.ok
    assert result.reason == f"smtp 127.0.0.1:{peer.port}: greeting 421 4.3.2 busy"
    assert result.step == "greeting"


def test_smtp_multiline_554_greeting_fails_with_all_its_text():
    async def go():
        async with ScriptedPeer([Send(b"554-5.3.2 no service\r\n554 5.3.2 go away\r\n"), Hold(2)]) as peer:
            return peer, await run_check(spec("smtp"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.reason == f"smtp 127.0.0.1:{peer.port}: greeting 554 5.3.2 no service 5.3.2 go away"


def test_smtp_greeting_just_under_the_timeout_passes():
    script = [Pause(0.6), Send(b"220 late but here\r\n"), Expect(b"EHLO"), Send(b"250 ok\r\n"),
              Expect(b"QUIT"), Send(b"221 bye\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return await run_check(spec("smtp", timeout=1.0), LOOPBACK, peer.port)
    result = run(go())
    assert result.ok, result.reason
    assert 0.6 <= result.latency < 1.0


def test_smtp_greeting_just_over_the_timeout_fails():
    script = [Pause(1.4), Send(b"220 too late\r\n"), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("smtp", timeout=1.0), LOOPBACK, peer.port)
    peer, result = run(go())
    assert not result.ok
    assert result.reason == f"smtp 127.0.0.1:{peer.port}: timeout after 1.0 s waiting for greeting"


def test_smtp_ehlo_rejected_fails():
    script = [Send(b"220 hi\r\n"), Expect(b"EHLO"), Send(b"502 5.5.1 EHLO not implemented\r\n"), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("smtp"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.reason == f"smtp 127.0.0.1:{peer.port}: EHLO 502 5.5.1 EHLO not implemented"
    assert result.step == "reply to EHLO"


def test_smtp_connection_dropped_after_greeting_fails():
    async def go():
        async with ScriptedPeer([Send(b"220 hi\r\n"), Expect(b"EHLO"), Close()]) as peer:
            return peer, await run_check(spec("smtp"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert not result.ok
    assert result.reason == f"smtp 127.0.0.1:{peer.port}: connection closed by peer waiting for reply to EHLO"


def test_smtp_garbage_greeting_fails():
    async def go():
        async with ScriptedPeer([Send(b"SSH-2.0-OpenSSH_9.2\r\n"), Hold(2)]) as peer:
            return await run_check(spec("smtp"), LOOPBACK, peer.port)
    result = run(go())
    assert not result.ok and "not an SMTP reply waiting for greeting: 'SSH-2.0-OpenSSH_9.2'" in result.reason


def test_smtp_missing_221_after_good_dialogue_still_passes_and_says_so():
    script = [Send(b"220 hi\r\n"), Expect(b"EHLO"), Send(b"250 ok\r\n"), Expect(b"QUIT"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("smtp"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.ok
    assert result.reason == (f"smtp 127.0.0.1:{peer.port}: ok: greeting, EHLO "
                             f"(then connection closed by peer waiting for reply to QUIT)")


def test_smtps_implicit_tls_passes(certs):
    async def go():
        async with aiosmtpd(implicit=certs.server_context()) as (port, _):
            return port, await run_check(tls_spec("smtps", certs), LOOPBACK, port)
    port, result = run(go())
    assert result.ok, result.reason
    assert result.reason == f"smtps 127.0.0.1:{port}: ok: TLS, greeting, EHLO, QUIT"


def test_smtps_tls_handshake_failure_fails():
    async def go():  # a plaintext server where TLS is expected
        async with ScriptedPeer([Send(b"220 plain text\r\n"), Hold(2)]) as peer:
            return peer, await run_check(spec("smtps", verify=False), LOOPBACK, peer.port)
    peer, result = run(go())
    assert not result.ok
    assert result.reason.startswith(f"smtps 127.0.0.1:{peer.port}: TLS handshake failed: ")
    assert result.step == "TLS handshake"


def test_smtps_wrong_certificate_name_with_verification_fails(certs):
    async def go():
        async with aiosmtpd(implicit=certs.server_context()) as (port, _):
            return port, await run_check(tls_spec("smtps", certs, server_name="other.example.test"), LOOPBACK, port)
    port, result = run(go())
    assert not result.ok
    assert result.reason.startswith(f"smtps 127.0.0.1:{port}: TLS handshake: certificate verify failed: "
                                    f"Hostname mismatch")
    assert "other.example.test" in result.reason


def test_smtps_unknown_ca_fails_without_ca_file(certs):
    async def go():
        async with aiosmtpd(implicit=certs.server_context()) as (port, _):
            return await run_check(tls_spec("smtps", certs, ca_file=None), LOOPBACK, port)
    result = run(go())
    assert not result.ok and "certificate verify failed: unable to get local issuer certificate" in result.reason


def test_smtps_without_server_name_verifies_chain_only(certs):
    async def go():
        async with aiosmtpd(implicit=certs.server_context()) as (port, _):
            return await run_check(tls_spec("smtps", certs, server_name=None), LOOPBACK, port)
    assert run(go()).ok


def test_smtps_verify_false_accepts_unknown_ca(certs):
    async def go():
        async with aiosmtpd(implicit=certs.server_context()) as (port, _):
            return await run_check(spec("smtps", verify=False), LOOPBACK, port)
    assert run(go()).ok


def test_submission_starttls_and_auth_passes(certs):
    async def go():
        async with aiosmtpd(starttls=certs.server_context(), auth=True) as (port, handler):
            result = await run_check(tls_spec("submission", certs, tls="starttls"), LOOPBACK, port, CREDS)
            return port, handler, result
    port, handler, result = run(go())
    assert result.ok, result.reason
    assert result.reason == f"submission 127.0.0.1:{port}: ok: greeting, EHLO, STARTTLS, EHLO, AUTH PLAIN, QUIT"
    assert len(handler.helos) == 2  # EHLO again after STARTTLS (RFC 3207 section 4.2)


def test_submission_without_starttls_offered_fails():
    async def go():
        async with aiosmtpd() as (port, _):
            return port, await run_check(spec("submission", tls="starttls", verify=False), LOOPBACK, port)
    port, result = run(go())
    assert not result.ok
    assert result.reason == (f"submission 127.0.0.1:{port}: STARTTLS not offered in the EHLO reply "
                             f"(required for submission)")


def test_submission_auth_rejected_fails_without_revealing_the_password(certs):
    wrong = Credentials(CREDS.user, "not-the-password")

    async def go():
        async with aiosmtpd(starttls=certs.server_context(), auth=True) as (port, _):
            return port, await run_check(tls_spec("submission", certs, tls="starttls"), LOOPBACK, port, wrong)
    port, result = run(go())
    assert not result.ok
    assert result.reason.startswith(f"submission 127.0.0.1:{port}: AUTH PLAIN failed: 535")
    for secret in wrong.secrets():
        assert secret not in result.reason


def test_submission_auth_login_when_plain_not_offered():
    script = [Send(b"220 hi\r\n"), Expect(b"EHLO"), Send(b"250-hi\r\n250 AUTH LOGIN\r\n"), Expect(b"AUTH LOGIN"),
              Send(b"334 VXNlcm5hbWU6\r\n"), Expect(b"Y2hlY2tAZXhhbXBsZS50ZXN0"), Send(b"334 UGFzc3dvcmQ6\r\n"),
              Expect(b"cHctUzNjcmV0IQ=="), Send(b"235 2.7.0 ok\r\n"), Expect(b"QUIT"), Send(b"221 bye\r\n"),
              Close()]

    async def go():  # loopback: credentials may go in clear text
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("smtp"), LOOPBACK, peer.port, CREDS)
    peer, result = run(go())
    assert result.ok, (result.reason, peer.errors)
    assert "AUTH LOGIN" in result.reason


# --- credentials policy ------------------------------------------------------------------------

def test_credentials_never_sent_in_clear_text_off_the_host(monkeypatch):
    async def no_connect(self):
        raise AssertionError("must not connect")
    monkeypatch.setattr(Dialogue, "connect", no_connect)
    result = run(run_check(spec("imap"), "192.0.2.10", 143, CREDS))
    assert not result.ok and result.step == "policy"
    assert "refusing to send credentials in clear text" in result.reason
    assert cleartext_allowed("127.0.0.2") and cleartext_allowed("::1") and not cleartext_allowed("192.0.2.10")


def test_credentials_file_with_bad_mode_is_refused(tmp_path):
    path = tmp_path / "creds"
    path.write_text(f"user=check\npassword={SECRET}\n")
    os.chmod(path, 0o644)
    with pytest.raises(CredentialsError) as err:
        load_credentials(str(path), owner_uid=os.geteuid())
    assert "mode 0644 lets group or others access it; chmod 600" in str(err.value)
    assert SECRET not in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_credentials_file_not_owned_by_root_is_refused(tmp_path):
    path = tmp_path / "creds"
    path.write_text(f"user=check\npassword={SECRET}\n")
    os.chmod(path, 0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(CredentialsError, match="owned by uid 65534, must be owned by uid 0"):
        load_credentials(str(path))


def test_credentials_file_symlink_is_refused(tmp_path):
    real = tmp_path / "real"
    real.write_text(f"user=check\npassword={SECRET}\n")
    os.chmod(real, 0o600)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(CredentialsError, match="cannot open"):
        load_credentials(str(tmp_path / "link"), owner_uid=os.geteuid())


def test_credentials_file_is_read_and_never_shown(tmp_path):
    path = tmp_path / "creds"
    path.write_text(f"# health check account\nlogin = check@example.test\npasswd = {SECRET}\n")
    os.chmod(path, 0o600)
    creds = load_credentials(str(path), owner_uid=os.geteuid())
    assert (creds.user, creds.password) == ("check@example.test", SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)


@pytest.mark.parametrize("text, message", [
    ("user=a\n", "missing password="),
    ("user=a\npassword=b\npassword=c\n", ":3: password given twice"),
    ("user a\npassword=b\n", ":1: expected key=value"),
    ("user=a\nsecret=b\n", ":2: unknown key 'secret'"),
    ("user=a\npassword=\n", ":2: password is empty"),
])
def test_credentials_file_errors_name_the_line_not_the_value(tmp_path, text, message):
    path = tmp_path / "creds"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(CredentialsError, match=message):
        load_credentials(str(path), owner_uid=os.geteuid())


# --- IMAP ------------------------------------------------------------------------------------------

_IMAP_CAPS = b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\n"


def test_imap_login_and_examine_passes_with_quoted_credentials():
    creds = Credentials("check", 'p"w\\d')
    script = [Send(b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n"),
              Expect(b"L1 CAPABILITY"), Send(_IMAP_CAPS + b"L1 OK done\r\n"),
              Expect(b"L2 LOGIN"), Send(b"L2 OK [CAPABILITY IMAP4rev1] Logged in\r\n"),
              Expect(b"L3 EXAMINE"),
              Send(b"* FLAGS (\\Seen)\r\n* 2 EXISTS\r\n* 1 FETCH (BODY[] {5}\r\nhello)\r\n"
                   b"L3 OK [READ-ONLY] Examine completed\r\n"),
              Expect(b"L4 LOGOUT"), Send(b"* BYE Logging out\r\nL4 OK Logout completed.\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("imap"), LOOPBACK, peer.port, creds)
    peer, result = run(go())
    assert result.ok, (result.reason, peer.errors)
    assert peer.received[1] == b'L2 LOGIN "check" "p\\"w\\\\d"\r\n'
    assert peer.received[2] == b'L3 EXAMINE "INBOX"\r\n'
    assert result.reason == f"imap 127.0.0.1:{peer.port}: ok: greeting, CAPABILITY, LOGIN, EXAMINE INBOX, LOGOUT"


def test_imap_non_ascii_password_travels_as_a_literal():
    creds = Credentials("check", "pässwörd")
    script = [Send(b"* OK ready\r\n"), Expect(b"L1 CAPABILITY"), Send(_IMAP_CAPS + b"L1 OK\r\n"),
              Expect(b'L2 LOGIN "check" {10}'), Send(b"+ go ahead\r\n"), Expect("pässwörd".encode()),
              Send(b"L2 OK\r\n"), Expect(b"L3 EXAMINE"), Send(b"L3 OK\r\n"),
              Expect(b"L4 LOGOUT"), Send(b"L4 OK\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("imap"), LOOPBACK, peer.port, creds)
    peer, result = run(go())
    assert result.ok, (result.reason, peer.errors)


def test_imap_login_rejected_fails_with_the_server_text():
    script = [Send(b"* OK ready\r\n"), Expect(b"L1 CAPABILITY"), Send(_IMAP_CAPS + b"L1 OK\r\n"),
              Expect(b"L2 LOGIN"), Send(b"L2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("imap"), LOOPBACK, peer.port, CREDS)
    peer, result = run(go())
    assert not result.ok
    assert result.reason == (f"imap 127.0.0.1:{peer.port}: LOGIN failed: "
                             "NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert result.step == "reply to LOGIN"


def test_imap_server_echoing_the_password_is_scrubbed_from_the_reason():
    script = [Send(b"* OK ready\r\n"), Expect(b"L1 CAPABILITY"), Send(_IMAP_CAPS + b"L1 OK\r\n"),
              Expect(b"L2 LOGIN"), Send(f"L2 NO password {SECRET} is wrong\r\n".encode()), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return await run_check(spec("imap"), LOOPBACK, peer.port, CREDS)
    result = run(go())
    assert not result.ok and "password *** is wrong" in result.reason
    assert_no_secret(result.reason)


def test_imap_missing_mailbox_fails():
    script = [Send(b"* OK ready\r\n"), Expect(b"L1 CAPABILITY"), Send(_IMAP_CAPS + b"L1 OK\r\n"),
              Expect(b"L2 LOGIN"), Send(b"L2 OK\r\n"), Expect(b'L3 EXAMINE "Health"'),
              Send(b"L3 NO [NONEXISTENT] Mailbox doesn't exist: Health\r\n"), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("imap", mailbox="Health"), LOOPBACK, peer.port, CREDS)
    peer, result = run(go())
    assert result.reason == (f"imap 127.0.0.1:{peer.port}: EXAMINE Health failed: "
                             f"NO [NONEXISTENT] Mailbox doesn't exist: Health")


def test_imap_bye_greeting_fails():
    async def go():
        async with ScriptedPeer([Send(b"* BYE Too many connections\r\n"), Hold(2)]) as peer:
            return peer, await run_check(spec("imap"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.reason == f"imap 127.0.0.1:{peer.port}: greeting BYE Too many connections"


def test_imap_preauth_greeting_passes_and_skips_login():
    script = [Send(b"* PREAUTH welcome\r\n"), Expect(b"L1 CAPABILITY"), Send(_IMAP_CAPS + b"L1 OK\r\n"),
              Expect(b"L2 EXAMINE"), Send(b"L2 OK\r\n"), Expect(b"L3 LOGOUT"), Send(b"L3 OK\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("imap"), LOOPBACK, peer.port, CREDS)
    peer, result = run(go())
    assert result.ok, (result.reason, peer.errors)
    assert "PREAUTH greeting, LOGIN skipped" in result.reason


def test_imap_starttls_passes(certs):
    script = [Send(b"* OK ready\r\n"), Expect(b"L1 CAPABILITY"),
              Send(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\nL1 OK\r\n"),
              Expect(b"L2 STARTTLS"), Send(b"L2 OK Begin TLS negotiation now.\r\n"), StartTLS(),
              Expect(b"L3 CAPABILITY"), Send(_IMAP_CAPS + b"L3 OK\r\n"),
              Expect(b"L4 LOGIN"), Send(b"L4 OK\r\n"), Expect(b"L5 EXAMINE"), Send(b"L5 OK\r\n"),
              Expect(b"L6 LOGOUT"), Send(b"L6 OK\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script, tls_context=certs.server_context()) as peer:
            return peer, await run_check(tls_spec("imap", certs, tls="starttls"), LOOPBACK, peer.port, CREDS)
    peer, result = run(go())
    assert result.ok, (result.reason, peer.errors)
    assert "STARTTLS, CAPABILITY, LOGIN" in result.reason


def test_imap_logindisabled_without_tls_fails():
    script = [Send(b"* OK ready\r\n"), Expect(b"L1 CAPABILITY"),
              Send(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\nL1 OK\r\n"), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return await run_check(spec("imap"), LOOPBACK, peer.port, CREDS)
    result = run(go())
    assert not result.ok and "LOGINDISABLED (use tls: starttls)" in result.reason


def test_imaps_implicit_tls_passes(certs):
    script = [Send(b"* OK ready\r\n"), Expect(b"L1 CAPABILITY"), Send(_IMAP_CAPS + b"L1 OK\r\n"),
              Expect(b"L2 LOGOUT"), Send(b"* BYE\r\nL2 OK\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script, ssl_context=certs.server_context()) as peer:
            return peer, await run_check(tls_spec("imaps", certs), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.reason == f"imaps 127.0.0.1:{peer.port}: ok: TLS, greeting, CAPABILITY, LOGOUT"


# --- POP3 ------------------------------------------------------------------------------------------

def test_pop3_user_pass_stat_passes():
    script = [Send(b"+OK Dovecot ready.\r\n"), Expect(b"USER check@example.test"), Send(b"+OK\r\n"),
              Expect(f"PASS {SECRET}".encode()), Send(b"+OK Logged in.\r\n"), Expect(b"STAT"),
              Send(b"+OK 0 0\r\n"), Expect(b"QUIT"), Send(b"+OK Logging out.\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("pop3"), LOOPBACK, peer.port, CREDS)
    peer, result = run(go())
    assert result.ok, (result.reason, peer.errors)
    assert result.reason == f"pop3 127.0.0.1:{peer.port}: ok: greeting, USER, PASS, STAT, QUIT"


def test_pop3_err_greeting_fails():
    async def go():
        async with ScriptedPeer([Send(b"-ERR [SYS/TEMP] server busy\r\n"), Hold(2)]) as peer:
            return peer, await run_check(spec("pop3"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.reason == f"pop3 127.0.0.1:{peer.port}: greeting -ERR [SYS/TEMP] server busy"


def test_pop3_password_rejected_fails():
    script = [Send(b"+OK ready\r\n"), Expect(b"USER"), Send(b"+OK\r\n"), Expect(b"PASS"),
              Send(b"-ERR [AUTH] Authentication failed.\r\n"), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return peer, await run_check(spec("pop3"), LOOPBACK, peer.port, CREDS)
    peer, result = run(go())
    assert result.reason == f"pop3 127.0.0.1:{peer.port}: PASS failed: -ERR [AUTH] Authentication failed."
    assert_no_secret(result.reason)


def test_pop3_stls_passes(certs):
    script = [Send(b"+OK ready\r\n"), Expect(b"STLS"), Send(b"+OK Begin TLS negotiation\r\n"), StartTLS(),
              Expect(b"QUIT"), Send(b"+OK bye\r\n"), Close()]

    async def go():
        async with ScriptedPeer(script, tls_context=certs.server_context()) as peer:
            return await run_check(tls_spec("pop3", certs, tls="starttls"), LOOPBACK, peer.port)
    result = run(go())
    assert result.ok, result.reason
    assert "STLS" in result.reason


# --- HTTP ------------------------------------------------------------------------------------------

class _Pages(http.server.BaseHTTPRequestHandler):
    """Health pages: the seed's solicitud.html, a broken one, one without the text."""

    protocol_version = "HTTP/1.1"
    hosts: list[str] = []
    pages = {"/solicitud.html": (200, b"<html><body>test page</body></html>"),
             "/broken": (500, b"oops"), "/empty": (200, b"<html>nothing to see</html>")}

    def do_GET(self):
        type(self).hosts.append(self.headers.get("Host", ""))
        status, body = self.pages.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(context: ssl.SSLContext | None = None):
    """Python's http.server on 127.0.0.1 in a thread; yields the port."""
    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Pages)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_http_200_with_receive_text_passes():
    with http_server() as port:
        result = run(run_check(spec("http", path="/solicitud.html", receive="test page", host="www.example.test"),
                               LOOPBACK, port))
    assert result.ok, result.reason
    assert result.reason == f"http 127.0.0.1:{port}: ok: GET /solicitud.html 200, receive found"
    assert _Pages.hosts[-1] == f"www.example.test:{port}"


def test_http_500_fails():
    with http_server() as port:
        result = run(run_check(spec("http", path="/broken"), LOOPBACK, port))
    assert not result.ok
    assert result.reason == f"http 127.0.0.1:{port}: GET /broken: status 500 Internal Server Error (expected 200)"


def test_http_200_without_receive_text_fails():
    with http_server() as port:
        result = run(run_check(spec("http", path="/empty", receive="test page"), LOOPBACK, port))
    assert not result.ok
    assert result.reason == (f"http 127.0.0.1:{port}: GET /empty: status 200 but the body does not contain "
                             f"'test page' (27 bytes read)")


def test_http_receive_regex_matches():
    with http_server() as port:
        result = run(run_check(spec("http", path="/solicitud.html", receive=r"<body>\s*test\s+page",
                                    receive_regex=True), LOOPBACK, port))
    assert result.ok and result.reason.endswith("receive matched")


def test_http_receive_regex_without_match_fails():
    with http_server() as port:
        result = run(run_check(spec("http", path="/solicitud.html", receive=r"^test", receive_regex=True),
                               LOOPBACK, port))
    assert not result.ok and "does not match '^test'" in result.reason


def test_http_host_defaults_to_the_address():
    with http_server() as port:
        run(run_check(spec("http", path="/solicitud.html"), LOOPBACK, port))
    assert _Pages.hosts[-1] == f"127.0.0.1:{port}"


def test_http_chunked_body_is_decoded():
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n"

    async def go():
        script = [Expect(b"GET /health"), Pause(0.05), Send(b"HTTP/1.1 100 Continue\r\n\r\n" + body), Close()]
        async with ScriptedPeer(script) as peer:
            return await run_check(spec("http", path="/health", receive="hello world"), LOOPBACK, peer.port)
    result = run(go())
    assert result.ok, result.reason


def test_https_passes_with_host_as_certificate_name(certs):
    with http_server(certs.server_context()) as port:
        result = run(run_check(spec("https", path="/solicitud.html", receive="test page", host=Certificates.NAME,
                                    ca_file=certs.ca_file), LOOPBACK, port))
    assert result.ok, result.reason
    assert result.reason.startswith(f"https 127.0.0.1:{port}: ok: TLS, GET /solicitud.html 200")


# --- connect, on, off --------------------------------------------------------------------------

def test_connect_passes():
    async def go():
        async with ScriptedPeer([Hold(2)]) as peer:
            return peer, await run_check(spec("connect"), LOOPBACK, peer.port)
    peer, result = run(go())
    assert result.reason == f"connect 127.0.0.1:{peer.port}: ok: connect"


def test_connect_refused_fails():
    with refused_port() as port:
        result = run(run_check(spec("connect"), LOOPBACK, port))
    assert result.reason == f"connect 127.0.0.1:{port}: connect: connection refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
def test_connect_with_socket_mark_passes():
    async def go():
        async with ScriptedPeer([Hold(2)]) as peer:
            return await run_check(spec("connect"), LOOPBACK, peer.port, mark=0x1234)
    assert run(go()).ok


def test_on_and_off_need_no_network():
    up = run(run_check(CheckSpec(type="on"), "192.0.2.1", 25))
    down = run(run_check(CheckSpec(type="off"), "192.0.2.1", 25))
    assert up.ok and up.reason == "on 192.0.2.1:25: checks are off, the server is kept up"
    assert not down.ok and down.reason == "off 192.0.2.1:25: checks are off, the server is kept down"


# --- external ------------------------------------------------------------------------------------

def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return str(path)


def test_external_exit_0_passes_with_ldirectord_arguments(tmp_path):
    out = tmp_path / "args"
    command = _script(tmp_path, "ok.sh", 'out=$1; shift; echo "$@" > "$out"; exit 0\n')
    result = run(run_check(spec("external", command=f"{command} {out}"), LOOPBACK, 2525,
                           virtual=("192.0.2.33", 25)))
    assert result.ok, result.reason
    assert out.read_text().split() == ["192.0.2.33", "25", "127.0.0.1", "2525"]
    assert result.reason == "external 127.0.0.1:2525: ok: ok.sh exited 0"


def test_external_exit_1_fails_with_its_last_output_line(tmp_path):
    command = _script(tmp_path, "fail.sh", 'echo "probing $3:$4"; echo "451 4.3.0 queue full" >&2; exit 1\n')
    result = run(run_check(spec("external", command=command), LOOPBACK, 25))
    assert not result.ok
    assert result.reason == f"external 127.0.0.1:25: {command} exited with status 1: 451 4.3.0 queue full"


def test_external_timeout_kills_the_command_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    command = _script(tmp_path, "hang.sh", f'sleep 30 & echo $$ $! > {pids}; wait\n')
    started = time.monotonic()
    result = run(run_check(spec("external", command=command, timeout=0.5), LOOPBACK, 25))
    assert time.monotonic() - started < 2
    assert not result.ok
    assert result.reason == f"external 127.0.0.1:25: timeout after 0.5 s waiting for {command} to exit"
    for pid in pids.read_text().split():
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and _alive(int(pid)):
            time.sleep(0.02)
        assert not _alive(int(pid)), f"process {pid} survived the timeout"


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_external_missing_program_fails(tmp_path):
    result = run(run_check(spec("external", command=str(tmp_path / "nope")), LOOPBACK, 25))
    assert not result.ok and result.reason.endswith("nope: No such file or directory")


def test_reason_durations_read_naturally():
    assert [seconds(t) for t in (2.0, 0.5, 10, 0.25)] == ["2.0 s", "0.5 s", "10.0 s", "0.25 s"]


def test_smtp_starttls_injection_is_refused(certs):
    # RFC 3207 section 6: bytes sent after "220 ready" but before the handshake must not be trusted.
    script = [Send(b"220 hi\r\n"), Expect(b"EHLO"), Send(b"250-hi\r\n250 STARTTLS\r\n"), Expect(b"STARTTLS"),
              Send(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n"), Hold(2)]

    async def go():
        async with ScriptedPeer(script) as peer:
            return await run_check(tls_spec("smtp", certs, tls="starttls"), LOOPBACK, peer.port)
    result = run(go())
    assert not result.ok and "plaintext data after the TLS go-ahead" in result.reason


def test_missing_ca_file_fails_before_connecting(tmp_path, monkeypatch):
    async def no_connect(self):
        raise AssertionError("must not connect")
    monkeypatch.setattr(Dialogue, "connect", no_connect)
    missing = str(tmp_path / "missing-ca.pem")
    result = run(run_check(spec("smtps", ca_file=missing), LOOPBACK, 465))
    assert not result.ok and result.step == "TLS setup"
    assert result.reason == f"smtps 127.0.0.1:465: TLS setup: cannot load CA file {missing}: No such file or directory"
