"""Alerts really delivered: to an aiosmtpd relay and to a webhook receiver, on loopback."""

import asyncio
import json

from aiosmtpd.smtp import SMTP

from lvsmail.health.alerts import Alerter
from lvsmail.spec import AlertsSpec


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


def test_mail_and_webhook_reach_real_peers():
    inbox = Inbox()
    posted = []

    async def receiver(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        posted.append((head.split(b" ")[1], json.loads(await reader.readexactly(length))))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def go():
        server = await asyncio.start_server(receiver, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        relay = await asyncio.get_running_loop().create_server(lambda: SMTP(inbox), "127.0.0.1", 0)
        spec = AlertsSpec(email=("postmaster@example.org",), email_from="lvsmail@example.org",
                          smtp_host="127.0.0.1", smtp_port=relay.sockets[0].getsockname()[1],
                          webhook=f"http://127.0.0.1:{port}/hook")
        a = Alerter(spec, "clustermail")
        a.transition(("smtp", "198.51.100.20", 25), False, "smtp 198.51.100.20:25: connect: connection refused")
        await a.drain()
        server.close()
        relay.close()
        return a

    a = asyncio.run(go())
    assert (a.sent, a.failed) == (2, 0)
    sender, rcpts, body = inbox.messages[0]
    assert (sender, rcpts) == ("lvsmail@example.org", ["postmaster@example.org"])
    assert "smtp 198.51.100.20:25 down" in body and "connection refused" in body
    path, doc = posted[0]
    assert path == b"/hook" and (doc["service"], doc["address"], doc["state"]) == ("smtp", "198.51.100.20", "down")
