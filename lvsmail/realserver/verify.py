"""``realserver verify``: a message delivered by SMTP and read back by IMAP, through this real server.

It proves what the health checks cannot: that Postfix accepts mail for the cluster's
domain on the address clients reach (the VIP), delivers it into the shared Maildir,
and that the IMAP server finds it there. Each step is timed and a failure says which
step, against which peer, and what the server answered.
"""

from __future__ import annotations

import asyncio
import imaplib
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

from lvsmail.health.credentials import Credentials


@dataclass(frozen=True)
class StepResult:
    """One timed step."""

    name: str
    ok: bool
    seconds: float
    detail: str

    def line(self) -> str:
        """``ok   smtp deliver 192.0.2.33:25  12.3 ms  queued as ...``."""
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<28} {self.seconds * 1000:8.1f} ms  {self.detail}"


@dataclass
class VerifyReport:
    """Every step in order; ``ok`` when all passed."""

    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All steps passed (and there was at least one)."""
        return bool(self.steps) and all(s.ok for s in self.steps)


def parse_target(text: str | None, default_host: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port)."""
    if not text:
        return default_host, default_port
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    ipaddress.ip_address(host)  # ValueError for a name: lvsmail never resolves names
    return host, int(port) if port else default_port


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_verify(smtp: tuple[str, int], imap: tuple[str, int], mailbox: str, creds: Credentials, *,
               timeout: float = 10.0, helo: str | None = None) -> VerifyReport:
    """Deliver, then poll the mailbox until the message is there (at most ``timeout``), fetch, delete."""
    report = VerifyReport()
    token = secrets.token_hex(8)
    subject = f"lvsmail verify {token}"
    msg = EmailMessage()
    msg["From"] = mailbox
    msg["To"] = mailbox
    msg["Subject"] = subject
    msg["Message-ID"] = f"<verify-{token}@lvsmail.invalid>"
    msg.set_content(f"lvsmail realserver verify, token {token}\n")

    # RFC 5321: one transaction, MAIL FROM/RCPT TO the test mailbox.
    started = time.monotonic()
    try:
        detail = asyncio.run(_deliver(smtp, msg, mailbox, timeout, helo))
        report.steps.append(StepResult(f"smtp deliver {_fmt(*smtp)}", True, time.monotonic() - started, detail))
    except Exception as exc:  # every failure becomes an explained step
        report.steps.append(StepResult(f"smtp deliver {_fmt(*smtp)}", False, time.monotonic() - started,
                                       _smtp_reason(exc, mailbox)))
        return report
    _imap_steps(report, imap, creds, subject, token, timeout)
    return report


async def _deliver(smtp: tuple[str, int], msg: EmailMessage, mailbox: str, timeout: float, helo: str | None) -> str:
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname=smtp[0], port=smtp[1], timeout=timeout, start_tls=False,
                             local_hostname=helo)
    async with asyncio.timeout(timeout):
        greeting = await client.connect()
        try:
            _errors, reply = await client.send_message(msg, sender=mailbox, recipients=[mailbox])
        finally:
            try:
                await client.quit()
            except Exception:  # the delivery result is what counts; QUIT failing is only closing
                client.close()
    banner = f" (greeting name {greeting.message.split()[0]})" if greeting and greeting.message else ""
    return f"250 {reply}{banner}"


def _smtp_reason(exc: Exception, mailbox: str) -> str:
    """What the SMTP failure means for an administrator."""
    import aiosmtplib

    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        return f"RCPT TO <{mailbox}> refused: {codes} (is the domain in mydestination or virtual_mailbox_domains, " \
               "and the mailbox in the maps?)"
    if isinstance(exc, aiosmtplib.SMTPConnectError) or isinstance(exc, ConnectionError):
        return f"cannot connect: {exc} (Postfix not running, or inet_interfaces without this address?)"
    if isinstance(exc, (TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return f"timed out: {exc or 'no answer'}"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _said(exc: Exception) -> str:
    """An error as text; an imaplib error carries the server's reply, decoded here (not a ``b'...'`` repr)."""
    if isinstance(exc, imaplib.IMAP4.error):
        return " ".join(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in exc.args)
    return str(exc) or type(exc).__name__


def _ok(reply: tuple[str, list], command: str) -> list:
    """The data of an ``OK`` reply; a ``NO`` or ``BAD`` raises with the server's text."""
    status, data = reply
    if status != "OK":
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise imaplib.IMAP4.error(f"{command} answered {status} {text}".rstrip())
    return data


def _imap_steps(report: VerifyReport, imap: tuple[str, int], creds: Credentials, subject: str, token: str,
                timeout: float) -> None:
    """Login, wait for the message, fetch and check it, delete it (RFC 9051).

    The standard library's IMAP client, not the health check's dialogue: a check only opens the
    mailbox read-only and never reads a message, while this selects, searches, fetches the
    message's text, and deletes it. ``timeout`` bounds each network operation.
    """
    name = f"imap {_fmt(*imap)}"
    started = time.monotonic()
    try:
        client = imaplib.IMAP4(imap[0], imap[1], timeout=timeout)
    except Exception as exc:
        report.steps.append(StepResult(f"{name} login", False, time.monotonic() - started,
                                       f"cannot connect: {type(exc).__name__}: {_said(exc)} (IMAP server not running, "
                                       "or not listening on this address?)"))
        return
    try:
        client.login(creds.user, creds.password)
    except Exception as exc:
        reason = _said(exc).replace(creds.password, "<hidden>")
        report.steps.append(StepResult(f"{name} login", False, time.monotonic() - started,
                                       f"{type(exc).__name__}: {reason}"))
        _logout(client)
        return
    report.steps.append(StepResult(f"{name} login", True, time.monotonic() - started, f"as {creds.user}"))
    try:
        started = time.monotonic()
        deadline = started + timeout
        found: list[bytes] = []
        polls = 0
        while True:
            # SELECT again each time: the new message is seen on a fresh open of the mailbox.
            _ok(client.select("INBOX"), "SELECT INBOX")
            found = (_ok(client.search(None, "SUBJECT", token), "SEARCH")[0] or b"").split()
            polls += 1
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if not found:
            report.steps.append(StepResult(f"{name} wait for message", False, time.monotonic() - started,
                                           f"not in INBOX after {timeout:.1f} s ({polls} searches): delivered to a "
                                           "different Maildir than the IMAP server reads (mail_location vs "
                                           "home_mailbox/virtual_mailbox_base), or still queued (mailq)"))
            return
        report.steps.append(StepResult(f"{name} wait for message", True, time.monotonic() - started,
                                       f"found after {polls} search(es)"))
        numbers = b",".join(found).decode()
        started = time.monotonic()
        data = _ok(client.fetch(numbers, "(BODY.PEEK[])"), "FETCH")  # BODY[]: RFC822 is gone from RFC 9051
        body = b"".join(part[1] for part in data if isinstance(part, tuple))
        ok = token.encode() in body
        report.steps.append(StepResult(f"{name} fetch", ok, time.monotonic() - started,
                                       f"{len(body)} bytes" + ("" if ok else ", token missing from the message")))
        started = time.monotonic()
        _ok(client.store(numbers, "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        _ok(client.expunge(), "EXPUNGE")
        report.steps.append(StepResult(f"{name} delete", True, time.monotonic() - started, "test message removed"))
    except Exception as exc:
        report.steps.append(StepResult(f"{name}", False, time.monotonic() - started,
                                       f"{type(exc).__name__}: {_said(exc)}"))
    finally:
        _logout(client)


def _logout(client: imaplib.IMAP4) -> None:
    """LOGOUT and close the socket (imaplib closes it even when LOGOUT fails)."""
    try:
        client.logout()
    except OSError:  # the socket's own shutdown failed (a peer that reset it): the verdict is already recorded
        pass
