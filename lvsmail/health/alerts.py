"""Telling people: a mail and a webhook POST per health transition, and reminders.

ldirectord's ``emailalert`` mails on every transition and, with
``emailalertfreq``, repeats while a server stays down; lvsmail does the same
(``alerts.repeat``) and can also POST a JSON document to a webhook.

Alerts leave in background tasks: a slow or dead mail relay must never delay a
health decision or the IPVS change that follows it. A failed send is logged
with its reason; it is not retried beyond the next reminder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

from lvsmail.spec import AlertsSpec

log = logging.getLogger("lvsmail.alerts")

SEND_TIMEOUT = 10.0  # seconds for one mail or one webhook request

Key = tuple[str, str, int]
MailSender = Callable[[EmailMessage, AlertsSpec], Awaitable[None]]
Poster = Callable[[str, bytes], Awaitable[None]]


async def send_mail(message: EmailMessage, spec: AlertsSpec) -> None:
    """Hand the alert to the configured relay (RFC 5321) with aiosmtplib."""
    import aiosmtplib

    await aiosmtplib.send(message, hostname=spec.smtp_host, port=spec.smtp_port, timeout=SEND_TIMEOUT,
                          start_tls=False)


async def post_json(url: str, body: bytes) -> None:
    """POST the alert document; urllib covers http and https without another dependency."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "lvsmail"})

    def go() -> None:
        with urllib.request.urlopen(req, timeout=SEND_TIMEOUT) as resp:
            if resp.status >= 300:
                raise OSError(f"HTTP {resp.status}")

    await asyncio.to_thread(go)


class Alerter:
    """Sends transition alerts and down reminders for one cluster."""

    def __init__(self, spec: AlertsSpec, cluster: str, *, mailer: MailSender = send_mail, poster: Poster = post_json,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.cluster = cluster
        self.mailer = mailer
        self.poster = poster
        self.clock = clock
        self.sent = 0
        self.failed = 0
        self._last: dict[Key, float] = {}  # last alert per down server, for reminders
        self._tasks: set[asyncio.Task] = set()

    def transition(self, key: Key, up: bool, reason: str) -> None:
        """Announce that a real server went up or down."""
        if up:
            self._last.pop(key, None)
        else:
            self._last[key] = self.clock()
        self._send(key, "up" if up else "down", reason)

    def remind(self, down: dict[Key, str]) -> None:
        """Repeat the alert for servers still down after ``repeat`` seconds (``down``: key → last reason)."""
        if not self.spec.repeat:
            return
        now = self.clock()
        for key, reason in down.items():
            last = self._last.setdefault(key, now)
            if now - last >= self.spec.repeat:
                self._last[key] = now
                self._send(key, "still down", reason)

    async def drain(self) -> None:
        """Wait for alerts in flight (on shutdown, so the last transition is not lost)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=SEND_TIMEOUT + 1)

    def _send(self, key: Key, what: str, reason: str) -> None:
        service, address, port = key
        subject = f"[lvsmail {self.cluster}] {service} {address}:{port} {what}"
        if self.spec.email:
            self._spawn(self._mail(subject, reason))
        if self.spec.webhook:
            doc = {"cluster": self.cluster, "service": service, "address": address, "port": port,
                   "state": what, "reason": reason, "time": time.time(), "director": socket.gethostname()}
            self._spawn(self._post(json.dumps(doc).encode()))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mail(self, subject: str, reason: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.spec.email_from
        msg["To"] = ", ".join(self.spec.email)
        msg["Subject"] = subject
        msg.set_content(f"{subject}\n\n{reason}\n\nDirector: {socket.gethostname()}\n")
        try:
            await self.mailer(msg, self.spec)
            self.sent += 1
        except Exception as exc:  # any relay failure: reported, and the health engine goes on
            self.failed += 1
            log.error("alerts: mail to %s via %s:%s failed: %s",
                      msg["To"], self.spec.smtp_host, self.spec.smtp_port, exc)

    async def _post(self, body: bytes) -> None:
        try:
            await self.poster(self.spec.webhook, body)
            self.sent += 1
        except Exception as exc:
            self.failed += 1
            log.error("alerts: webhook %s failed: %s", self.spec.webhook, exc)
