"""realserver verify: each failure names the step and says what it means (SMTP peers on 127.0.0.1)."""

from __future__ import annotations

import socket

import pytest

from lvsmail.health.credentials import Credentials
from lvsmail.realserver.verify import parse_target, run_verify

CREDS = Credentials("probe@example.org", "pw")


def test_parse_target_takes_defaults_and_refuses_names():
    assert parse_target(None, "192.0.2.33", 25) == ("192.0.2.33", 25)
    assert parse_target("127.0.0.1:2525", "x", 25) == ("127.0.0.1", 2525)
    assert parse_target("[2001:db8::1]:143", "x", 25) == ("2001:db8::1", 143)
    with pytest.raises(ValueError):
        parse_target("mail.example.org:25", "x", 25)


def test_refused_smtp_port_is_explained_and_stops_before_imap():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        report = run_verify(("127.0.0.1", port), ("127.0.0.1", 1), "probe@example.org", CREDS, timeout=2)
    assert not report.ok and len(report.steps) == 1
    assert report.steps[0].name == f"smtp deliver 127.0.0.1:{port}"
    assert "cannot connect" in report.steps[0].detail and "inet_interfaces" in report.steps[0].detail
    assert report.steps[0].line().startswith("FAIL smtp deliver")


def test_rejected_recipient_is_explained():
    pytest.importorskip("aiosmtpd")
    from aiosmtpd.controller import Controller

    class Reject:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
            return "550 5.1.1 <probe@example.org>: Recipient address rejected: User unknown"

    with socket.socket() as s:  # a port that was free a moment ago (the controller probes its own port)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Reject(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        report = run_verify(("127.0.0.1", port), ("127.0.0.1", 1), "probe@example.org", CREDS, timeout=5)
    finally:
        controller.stop()
    assert not report.ok
    detail = report.steps[0].detail
    assert detail.startswith("RCPT TO <probe@example.org> refused: 550 5.1.1")
    assert "virtual_mailbox_domains" in detail
