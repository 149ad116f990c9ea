"""Just enough HTTP/1.1 (RFC 9112) for the registration API: one request per connection, JSON bodies.

No web framework is installed on the directors, and this API needs only
Content-Length bodies, ``Connection: close`` and a handful of headers, so a
small reader with hard limits (line length, header count, body size checked
before the body is read) is both smaller and easier to reason about than a
dependency.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

MAX_LINE = 2048
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
        name = name.strip().lower()
        if not sep or not name or name != name.strip() or " " in name:
            raise HTTPError(400, "malformed header line")
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
        return raw.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise HTTPError(400, "non-ASCII bytes in the head") from None


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
