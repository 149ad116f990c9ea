"""The chaos run's MTA clients against a real SMTP peer (aiosmtpd) in a namespace on this machine.

``send_direct`` is how the queue-full fault puts mail into one real server's
queue: the messages must be accepted by that server, not the VIP, and enter the
run's Message-ID accounting like every other message.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading

import pytest

from lvsmail.net import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

SERVER, CLIENT, VIP = "198.51.100.20", "203.0.113.10", "192.0.2.33"


class Inbox:
    def __init__(self):
        self.ids: list[str] = []

    async def handle_DATA(self, server, session, envelope):
        for line in envelope.content.decode().splitlines():
            if line.lower().startswith("message-id:"):
                self.ids.append(line.split(":", 1)[1].strip().strip("<>"))
        return "250 2.0.0 queued as rs1"


def test_send_direct_reaches_the_real_server_and_is_accounted():
    from aiosmtpd.smtp import SMTP

    from lvsmail.lab.chaos.clients import MtaClients

    ns = f"lvschaoscl{os.getpid()}"
    netns.create_netns(ns)
    inbox, stop = Inbox(), threading.Event()
    try:
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{SERVER}/32", "dev", "lo"],
                    ["addr", "add", f"{CLIENT}/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True, capture_output=True)
        started = threading.Event()

        def serve():
            async def main():
                server = await asyncio.get_running_loop().create_server(lambda: SMTP(inbox), SERVER, 25)
                started.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                server.close()

            asyncio.run(main())

        thread = netns.start_in_netns(ns, serve)
        assert started.wait(10)
        # Nothing listens on the VIP here: the producer's messages fail and wait for a retry, as in a fault.
        clients = MtaClients(ns, VIP, [CLIENT], seed=7, senders=1, readers=0, rate=0.2).start()
        sent = clients.send_direct(SERVER, 3)
        clients.stop()
        stop.set()
        thread.join(10)
    finally:
        stop.set()
        netns.remove_netns(ns)
    assert [m.accepted_at is not None for m in sent] == [True, True, True], [m.errors for m in sent]
    assert sorted(inbox.ids) == sorted(m.mid for m in sent)
    assert {m.mid for m in sent} <= {m.mid for m in clients.messages}  # in the run's accounting
