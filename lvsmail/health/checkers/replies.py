"""Pure parsers of what real servers answer to checks: SMTP replies, IMAP and POP3 lines, HTTP responses.

A real server is input lvsmail does not control: a hostile or broken one may
send anything. These functions take bytes or text already read and either
return what the checker needs or raise ``ReplyError`` (a ``CheckFailed``, so
an unhandled one still fails the check with its message). They never raise
anything else, whatever the input (tests/unit/test_checker_parsers_property.py
holds them to that). The socket side (``Dialogue``) bounds how much is read;
these bound how much is kept and looked at.

Numbers in replies are ASCII digits only: ``str.isdigit`` and ``\\d`` also
accept other scripts' digits (``'²'.isdigit()`` is true and ``int('²')``
raises), and ``int`` refuses strings of more than 4300 decimal digits.
"""

from __future__ import annotations

import re

#: Longest line accepted. RFC 5321 section 4.5.3.1.5 allows 512 octets for an SMTP reply line and RFC 9112
#: section 2.3 recommends that HTTP accept at least 8000 octets of request line; servers' banners and
#: capability lists stay far below. Generous to real servers; it bounds memory, not conformance.
LINE_LIMIT = 16384
#: Most lines in one multi-line SMTP reply (RFC 5321 sets no limit; an EHLO reply has a dozen, a greeting a few).
MAX_REPLY_LINES = 200
#: Most bytes in one reply: an SMTP reply, an IMAP response with its untagged lines, an HTTP response's
#: header section. A few KB in practice; RFC 5321 section 4.5.3.1 caps each line, not a reply.
MAX_REPLY_BYTES = 64 * 1024


class CheckFailed(Exception):
    """The peer answered in a way that fails the check; the message is the tail of the reason."""


class ReplyError(CheckFailed):
    """A reply that cannot be parsed or breaks a limit: ``what`` was wrong, ``detail`` quotes the peer.

    The message is ``what`` (then ``: detail``); ``waiting`` puts the step in between.
    """

    def __init__(self, what: str, detail: str = ""):
        super().__init__(f"{what}: {detail}" if detail else what)
        self.what, self.detail = what, detail

    def waiting(self, step: str) -> CheckFailed:
        """The check's failure at ``step``: ``not an SMTP reply waiting for greeting: 'SSH-2.0'``."""
        return CheckFailed(f"{self.what} waiting for {step}" + (f": {self.detail}" if self.detail else ""))


def clip(text: str, limit: int = 200) -> str:
    """Shorten peer-supplied text for a reason; printable characters only."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text[:limit + 1])  # a 16 KB line costs no more
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ASCII_DIGITS = frozenset(b"0123456789")


def _is_code(text: bytes) -> bool:
    """Three ASCII digits (a reply code, RFC 5321 section 4.2)."""
    return len(text) == 3 and all(c in _ASCII_DIGITS for c in text)


# -- SMTP (RFC 5321 section 4.2) ------------------------------------------------------------------------

def scan_smtp_reply(buf: bytes | bytearray, start: int = 0, lines: int = 0) -> tuple[bool, int, int]:
    """Walk the complete lines of one SMTP reply in ``buf`` from ``start`` (``lines`` seen so far).

    Returns ``(complete, start, lines)``: when complete, ``buf[:start]`` is the
    whole reply (through its last ``NNN SP`` line); otherwise scanning resumes
    from ``start`` once more bytes came. A line that cannot continue a reply
    ends it, so junk fails at once (in ``parse_smtp_reply``) rather than at the
    timeout. Raises ReplyError past LINE_LIMIT, MAX_REPLY_LINES or MAX_REPLY_BYTES.
    """
    while True:
        end = buf.find(b"\n", start)
        if end < 0:
            if len(buf) - start > LINE_LIMIT:
                raise ReplyError(f"line longer than {LINE_LIMIT} bytes")
            if len(buf) > MAX_REPLY_BYTES:
                raise ReplyError(f"reply longer than {MAX_REPLY_BYTES} bytes")
            return False, start, lines
        if end - start > LINE_LIMIT:
            raise ReplyError(f"line longer than {LINE_LIMIT} bytes")
        lines += 1
        more = buf[start + 3:start + 4] == b"-" and _is_code(bytes(buf[start:start + 3]))
        start = end + 1
        if not more:
            return True, start, lines
        if lines >= MAX_REPLY_LINES:
            raise ReplyError(f"more than {MAX_REPLY_LINES} lines")
        if start > MAX_REPLY_BYTES:
            raise ReplyError(f"reply longer than {MAX_REPLY_BYTES} bytes")


def parse_smtp_reply(block: bytes) -> tuple[int, list[str]]:
    """A whole reply (lines ending in LF, as ``scan_smtp_reply`` delimits it) -> (code, texts).

    Every line must carry the same three-digit code followed by ``-``, a space
    or nothing; the texts are decoded leniently (invalid UTF-8 becomes U+FFFD).
    """
    code = None
    texts: list[str] = []
    raw_lines = block.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    if not raw_lines:
        raise ReplyError("empty reply")
    for raw in raw_lines:
        raw = raw.rstrip(b"\r")
        if not _is_code(raw[:3]) or raw[3:4] not in (b"", b" ", b"-"):
            raise ReplyError("not an SMTP reply", repr(clip(raw.decode("utf-8", "replace"))))
        this = int(raw[:3])
        if code is None:
            code = this
        elif this != code:
            raise ReplyError(f"reply code changed from {code} to {this:03d} within one reply")
        texts.append(raw[4:].decode("utf-8", "replace"))
    return code, texts


# -- IMAP (RFC 9051 / RFC 3501) -------------------------------------------------------------------------

#: A literal announced at the end of a line (RFC 9051 section 4.3); ten digits are far beyond LITERAL_LIMIT.
_LITERAL_AT_END = re.compile(r"\{([0-9]{1,10})\+?\}$", re.ASCII)


def imap_greeting(line: str) -> str:
    """The kind of an IMAP greeting (``OK``, ``PREAUTH``, ``BYE``; RFC 9051 section 7.1), or ``""`` if none."""
    return line[2:].split(" ", 1)[0].upper() if line.startswith("* ") else ""


def imap_literal_size(line: str) -> int | None:
    """The size of the literal announced at the end of ``line`` (``{12}`` or ``{12+}``), or None."""
    m = _LITERAL_AT_END.search(line)
    return int(m.group(1)) if m else None


def imap_tagged(line: str, tag: str) -> tuple[str, str] | None:
    """``(status, text)`` when ``line`` is the response tagged ``tag``, else None."""
    if not line.startswith(tag + " "):
        return None
    status, _, text = line[len(tag) + 1:].partition(" ")
    return status.upper(), clip(text)


def imap_capabilities(untagged: list[str]) -> set[str]:
    """The capability names (upper case) listed by ``* CAPABILITY`` lines among ``untagged``."""
    caps: set[str] = set()
    for line in untagged:
        words = line.split()
        if len(words) >= 2 and words[1].upper() == "CAPABILITY":
            caps.update(w.upper() for w in words[2:])
    return caps


# -- POP3 (RFC 1939 section 3) ---------------------------------------------------------------------------

def pop3_ok(line: str) -> bool:
    """Whether a POP3 status line is positive (``+OK``); anything else, ``-ERR`` included, is not."""
    return line.startswith("+OK")


# -- HTTP/1.1 (RFC 9112) ---------------------------------------------------------------------------------

#: RFC 9112 section 4: HTTP-version SP 3DIGIT SP [reason-phrase] (the SP before an empty phrase is optional
#: here, as many clients allow).
_STATUS_LINE = re.compile(r"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: (.*))?$", re.ASCII | re.DOTALL)
_DECIMAL = re.compile(r"[0-9]{1,18}", re.ASCII)  # Content-Length (RFC 9110 section 8.6): 1*DIGIT
_HEX = re.compile(r"[0-9A-Fa-f]{1,15}", re.ASCII)  # chunk-size (RFC 9112 section 7.1): 1*HEXDIG


def http_status_line(line: str) -> tuple[int, str]:
    """``(status, reason phrase)`` of a status line; ReplyError if it is not one."""
    m = _STATUS_LINE.match(line)
    if not m:
        raise ReplyError("not an HTTP response", repr(clip(line)))
    return int(m.group(3)), clip(m.group(4) or "", 80)


def http_header_field(line: str) -> tuple[str, str] | None:
    """``(lower-cased name, value)`` of a header line, or None for a line without a colon (ignored)."""
    name, sep, value = line.partition(":")
    if not sep:
        return None
    return name.strip().lower(), value.strip()


def http_content_length(value: str) -> int:
    """A Content-Length value; ReplyError unless it is plain decimal digits (a sign or a list is refused)."""
    value = value.strip()
    if not _DECIMAL.fullmatch(value):
        raise ReplyError("bad Content-Length", repr(clip(value)))
    return int(value)


def http_chunk_size(line: str) -> int:
    """The size on a chunk's size line (extensions after ``;`` ignored); ReplyError unless hex digits."""
    size = line.split(";", 1)[0].strip()
    if not _HEX.fullmatch(size):
        raise ReplyError("bad chunk size", repr(clip(line)))
    return int(size, 16)
