"""Reading whole SMTP replies (RFC 5321 section 4.2.1): multi-line, split across segments, and the ways a
reply can be wrong. A scripted server on 127.0.0.1 (no root needed) greets as each test says."""

import asyncio

from lvsmail.health.checkers import run_check
from lvsmail.health.checkers.dialogue import LINE_LIMIT, MAX_REPLY_LINES
from lvsmail.spec import CheckSpec

EHLO = b"250-mx.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def check_against(*greeting_parts: bytes, then_silent: bool = False, timeout: float = 2.0):
    """Run an SMTP check against a server that sends ``greeting_parts`` (a pause between them), then
    answers EHLO and QUIT — or, with ``then_silent``, says nothing more."""
    async def handle(reader, writer):
        for i, part in enumerate(greeting_parts):
            if i:
                await asyncio.sleep(0.05)  # a separate TCP segment
            writer.write(part)
            await writer.drain()
        if not then_silent:
            if (await reader.readline()).startswith(b"EHLO"):
                writer.write(EHLO)
                await writer.drain()
            if (await reader.readline()).startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                await writer.drain()
        await reader.read()
        writer.close()

    async def go():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await run_check(CheckSpec(type="smtp", timeout=timeout), "127.0.0.1", port)
        finally:
            server.close()

    return asyncio.run(go())


def test_a_multi_line_greeting_in_several_segments_passes():
    r = check_against(b"220-mx.example.org ESMTP\r\n220-", b"still greeting\r\n", b"220 ready\r\n")
    assert r.ok, r.reason
    assert r.reason.endswith("ok: greeting, EHLO, QUIT")


def test_a_reply_whose_code_changes_fails():
    r = check_against(b"220-mx.example.org\r\n421 busy\r\n")
    assert not r.ok
    assert r.reason.endswith("reply code changed from 220 to 421 within one reply waiting for greeting")


def test_a_reply_of_too_many_lines_fails():
    r = check_against(b"220-x\r\n" * (MAX_REPLY_LINES + 1) + b"220 ready\r\n")
    assert not r.ok and r.reason.endswith(f"more than {MAX_REPLY_LINES} lines waiting for greeting")


def test_a_line_that_never_ends_fails_at_the_limit():
    r = check_against(b"220 " + b"x" * (LINE_LIMIT + 10), then_silent=True)
    assert not r.ok and r.reason.endswith(f"line longer than {LINE_LIMIT} bytes waiting for greeting")


def test_junk_that_looks_continued_fails_at_once_not_at_the_timeout():
    r = check_against(b"abc-def\r\n", then_silent=True, timeout=5.0)
    assert not r.ok and r.reason.endswith("not an SMTP reply waiting for greeting: 'abc-def'")
    assert not r.expired  # judged on the line, not on the deadline


def test_a_bare_code_is_a_complete_reply():
    r = check_against(b"220\r\n")
    assert r.ok, r.reason
