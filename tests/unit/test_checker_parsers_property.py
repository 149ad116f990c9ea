"""Property-based tests of the checkers' reply parsers: on any input, a result or ReplyError/CheckFailed.

The pure parsers (``lvsmail.health.checkers.replies``) get arbitrary bytes and
text; the checkers' reading loops (IMAP's tagged response, HTTP's headers and
body) run over a scripted in-memory dialogue fed the same. Nothing else may
come out: a ValueError, IndexError or RecursionError here is a crash a real
server could cause (it would end as a logged "checker error").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lvsmail.health.checkers import http, imap
from lvsmail.health.checkers.replies import (
    LINE_LIMIT,
    MAX_REPLY_BYTES,
    MAX_REPLY_LINES,
    CheckFailed,
    ReplyError,
    clip,
    http_chunk_size,
    http_content_length,
    http_header_field,
    http_status_line,
    imap_capabilities,
    imap_greeting,
    imap_literal_size,
    imap_tagged,
    parse_smtp_reply,
    pop3_ok,
    scan_smtp_reply,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import parser_targets  # noqa: E402  (the checker_replies fuzz target: whole checks over a replayed peer)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Bytes that look like replies often enough to reach the deep branches: codes, separators, line ends.
reply_bytes = st.lists(
    st.one_of(st.sampled_from([b"220", b"250", b"421", b"-", b" ", b"\r\n", b"\n", b"\r", b"\xff", b"\xc3",
                               "²".encode(), "٢".encode(), b"{", b"}", b"* ", b"OK", b"HTTP/1.1 ", b":"]),
              st.binary(max_size=20)),
    max_size=40).map(b"".join)
reply_text = reply_bytes.map(lambda b: b.decode("utf-8", "replace")) | st.text(max_size=200)


# -- SMTP ------------------------------------------------------------------------------------------------

def _smtp(buf: bytes):
    complete, end, lines = scan_smtp_reply(buf)
    if not complete:
        return None
    return parse_smtp_reply(buf[:end]), lines


@SETTINGS
@given(reply_bytes)
@example("²²⁰ ready\r\n".encode())
@example(b"220-" + b"x" * (LINE_LIMIT + 1))
def test_smtp_reply_parser_returns_or_raises_reply_error(data):
    try:
        out = _smtp(data)
    except ReplyError:
        return
    if out is not None:
        (code, texts), lines = out
        assert 0 <= code <= 999 and len(texts) == lines


@SETTINGS
@given(reply_bytes, st.lists(st.integers(0, 400), max_size=8))
def test_smtp_scan_resumed_over_any_split_agrees_with_one_scan(data, cuts):
    """The dialogue rescans from where it stopped as bytes arrive: the outcome cannot depend on the split."""
    def outcome(scan):
        try:
            return scan()
        except ReplyError as exc:
            return str(exc)

    def resumed():
        start = lines = 0
        for cut in sorted(c for c in cuts if c < len(data)) + [len(data)]:
            complete, start, lines = scan_smtp_reply(data[:cut], start, lines)
            if complete:
                return complete, start, lines
        return complete, start, lines

    assert outcome(resumed) == outcome(lambda: scan_smtp_reply(data))


@SETTINGS
@given(st.integers(0, 999), st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")),
                                             max_size=60), min_size=1, max_size=MAX_REPLY_LINES))
def test_smtp_well_formed_replies_parse_back(code, texts):
    block = "".join(f"{code:03d}-{t}\r\n" for t in texts[:-1]) + f"{code:03d} {texts[-1]}\r\n"
    data = block.encode()
    if len(data) > MAX_REPLY_BYTES:
        return
    complete, end, _ = scan_smtp_reply(data + b"250 next reply\r\n")
    assert complete and end == len(data)
    assert parse_smtp_reply(data) == (code, texts)


# -- IMAP and POP3 ---------------------------------------------------------------------------------------

@SETTINGS
@given(reply_text, st.sampled_from(["L1", "L2", "A0001"]))
@example("* X {" + "9" * 5000 + "}", "L1")
@example("* X {٣}", "L1")
def test_imap_line_parsers_never_raise(line, tag):
    assert imap_greeting(line) in {"", *line[2:].upper().split(" ", 1)[:1]}
    size = imap_literal_size(line)
    assert size is None or 0 <= size < 10 ** 10
    tagged = imap_tagged(line, tag)
    assert tagged is None or line.startswith(tag + " ")
    assert isinstance(imap_capabilities([line, line]), set)
    assert pop3_ok(line) is line.startswith("+OK")


# -- HTTP ------------------------------------------------------------------------------------------------

@SETTINGS
@given(reply_text)
@example("HTTP/1.1 ٢٠٠ OK")
@example("-1")
@example("0x10")
@example("1_0")
def test_http_parsers_return_or_raise_reply_error(text):
    for parse in (http_status_line, http_content_length, http_chunk_size):
        try:
            value = parse(text)
        except ReplyError:
            continue
        number = value[0] if isinstance(value, tuple) else value
        assert isinstance(number, int) and number >= 0
    field = http_header_field(text)
    assert field is None or field[0] == field[0].lower()


@SETTINGS
@given(reply_text, st.integers(1, 300))
def test_clip_is_printable_and_bounded(text, limit):
    out = clip(text, max(limit, 4))
    assert out.isprintable() and len(out) <= max(limit, 4)


# -- the checkers' reading loops over a scripted dialogue ---------------------------------------------------

class ScriptedDialogue:
    """The reading half of a Dialogue over fixed bytes: the same limits, then the end of the connection."""

    def __init__(self, data: bytes):
        self.buffer = bytearray(data)
        self.step = ""

    def _end(self, waiting_for: str) -> CheckFailed:
        return CheckFailed(f"connection closed by peer waiting for {waiting_for}")

    async def read_line(self, waiting_for: str) -> str:
        self.step = waiting_for
        end = self.buffer.find(b"\n")
        if end > LINE_LIMIT or (end < 0 and len(self.buffer) > LINE_LIMIT):
            raise CheckFailed(f"line longer than {LINE_LIMIT} bytes waiting for {waiting_for}")
        if end < 0:
            raise self._end(waiting_for)
        line = bytes(self.buffer[:end + 1])
        del self.buffer[:end + 1]
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    async def read_exactly(self, n: int, waiting_for: str) -> bytes:
        assert n >= 0, "a negative read is a parser bug"
        if len(self.buffer) < n:
            raise self._end(waiting_for)
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def skip(self, n: int, waiting_for: str) -> None:
        await self.read_exactly(n, waiting_for)

    async def read_some(self, n: int, waiting_for: str) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


def run_to_end(coro):
    """Run a coroutine that never waits (the scripted dialogue answers at once)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    pytest.fail("the coroutine waited on something")


@SETTINGS
@given(reply_bytes)
@example(b"* X {" + b"9" * 5000 + b"}\r\nL1 OK\r\n")
@example(b"* 1 FETCH {3}\r\nabc)\r\nL1 OK done\r\n")
def test_imap_tagged_response_reader_returns_or_fails_the_check(data):
    try:
        status, text, untagged = run_to_end(imap._tagged(ScriptedDialogue(data), "L1", "reply to CAPABILITY"))
    except CheckFailed:
        return
    assert all(line.startswith("* ") for line in untagged)
    assert sum(map(len, untagged)) <= MAX_REPLY_BYTES


@SETTINGS
@given(reply_bytes)
@example(b"Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n")
@example(b"Content-Length: -5\r\n\r\nabcdef")
@example(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n")
def test_http_header_and_body_readers_return_or_fail_the_check(data):
    dlg = ScriptedDialogue(data)
    try:
        headers = run_to_end(http._headers(dlg, "headers"))
        body = run_to_end(http._body(dlg, headers, "body"))
    except CheckFailed:
        return
    assert len(body) <= http.BODY_LIMIT


# -- whole checks against a replayed peer (the checker_replies fuzz target) -----------------------------

@SETTINGS
@given(mode=st.integers(0, 255), data=reply_bytes)
@example(mode=0, data=b"220 ready\r\n250 mx1\r\n221 bye\r\n")
@example(mode=1 | 4 | 64, data=b"* OK ready\r\nL1 OK\r\n+ go\r\nL2 OK\r\n* 1 EXISTS {99999999}\r\n")
@example(mode=3 | 8, data=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n")
def test_a_whole_check_against_any_peer_passes_or_fails_with_check_failed(mode, data):
    """Every checker's dialogue, from greeting to QUIT/LOGOUT or the body, on any bytes: CheckFailed or a pass."""
    parser_targets.run_guarded("checker_replies", bytes([mode]) + data)


@pytest.mark.parametrize("seed", parser_targets.TARGETS["checker_replies"].seeds(), ids=lambda s: f"mode{s[0]}")
def test_each_checker_passes_a_well_behaved_server(seed):
    """The fuzz seeds are real passing dialogues: a replay that fails them is a broken seed or checker."""
    parser_targets.TARGETS["checker_replies"].run(seed)


@SETTINGS
@given(cut=st.integers(0, 2000), data=st.data())
def test_a_well_behaved_dialogue_cut_short_fails_with_a_reason(cut, data):
    """A server that closes mid-dialogue fails the check (it never passes half a dialogue, never crashes)."""
    seed = data.draw(st.sampled_from(parser_targets.TARGETS["checker_replies"].seeds()))
    if not 1 <= cut < len(seed) - 1:
        return
    mode, body = seed[0], seed[1:cut]
    kind = parser_targets.CHECKERS[mode & 3][0]
    try:
        parser_targets.TARGETS["checker_replies"].run(bytes([mode]) + body)
    except CheckFailed as exc:
        assert str(exc)
    else:  # passing is only possible once the verdict is in (the last reply), or with enough of an HTTP body
        assert kind == "http" or _decided_before(seed, cut), (seed, cut)


def _decided_before(seed: bytes, cut: int) -> bool:
    """Whether the cut falls in the last reply (QUIT's or LOGOUT's), which cannot fail a check once decided."""
    last = seed.rstrip(b"\r\n").rfind(b"\n")
    return cut > last
