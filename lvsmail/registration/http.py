"""Just enough HTTP/1.1 (RFC 9112) for the registration API: one request per connection, JSON bodies.

No web framework is installed on the directors, and this API needs only
Content-Length bodies, ``Connection: close`` and a handful of headers, so a
small reader with hard limits (line length, header count, body size checked
before the body is read) is both smaller and easier to reason about than a
dependency. It is strict where HTTP allows leniency (RFC 9112 §2.2, §5): bare
CR, non-ASCII bytes, folded or repeated headers and names that are not tokens
are refused with 400 rather than interpreted. The deadline that bounds the whole
request belongs to the caller (one ``asyncio.timeout`` around head and body).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

MAX_LINE = 2048
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_HEADERS = 32
#: Replies are small JSON objects; anything larger is not from a director.
MAX_REPLY = 65536

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
           413: "Content Too Large", 422: "Unprocessable Content", 500: "Internal Server Error",
           503: "Service Unavailable"}


class HTTPError(Exception):
    """A message that cannot be read; ``status`` is what a server answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Head:
    """A request line or status line with its headers (names lower-cased)."""

    start: str
    headers: dict[str, str] = field(default_factory=dict)

    def length(self) -> int | None:
        """Content-Length, or None when absent; HTTPError when malformed."""
        text = self.headers.get("content-length")
        if text is None:
            return None
        if not text.isdigit():
            raise HTTPError(400, f"bad Content-Length {text[:20]!r}")
        return int(text)


async def read_head(reader: asyncio.StreamReader) -> Head:
    """The start line and headers, each line bounded; a repeated header is refused (no ambiguity)."""
    start = await _line(reader)
    if not start:
        raise HTTPError(400, "empty request")
    head = Head(start)
    while True:
        line = await _line(reader)
        if not line:
            return head
        if len(head.headers) >= MAX_HEADERS:
            raise HTTPError(400, f"more than {MAX_HEADERS} headers")
        name, sep, value = line.partition(":")
        # RFC 9112 §5.1: no whitespace between the name and the colon; §5.2: a line folded onto the previous
        # one (starting with whitespace) is refused with 400; RFC 9110 §5.1: the name is a token.
        if not sep or not _TOKEN.match(name):
            raise HTTPError(400, "malformed header line")
        name = name.lower()
        if name in head.headers:
            raise HTTPError(400, f"header {name} repeated")
        head.headers[name] = value.strip()


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HTTPError(400, "line too long") from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return ""
        raise HTTPError(400, "connection closed in the middle of a line") from None
    if len(raw) > MAX_LINE:
        raise HTTPError(400, "line too long")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "non-ASCII bytes in the head") from None
    text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if _CONTROL.search(text):  # RFC 9110 §5.5: CR, LF and NUL are never part of a field; a bare CR is refused
        raise HTTPError(400, "control characters in the head")
    return text


def encode_request(method: str, host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """A complete request; the connection closes after the reply."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             f"Content-Length: {len(body)}"]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def encode_response(status: int, data: dict) -> bytes:
    """A complete JSON response that closes the connection."""
    body = json.dumps(data, sort_keys=True).encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n")
    return head.encode("ascii") + body
