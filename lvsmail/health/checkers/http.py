"""HTTP and HTTPS checks: one HTTP/1.1 request, status and body checked (RFC 9110, RFC 9112).

A minimal client over the check's Dialogue, enough for a health page: ``method``
``path`` with ``Host`` (the check's ``host`` — ldirectord's ``virtualhost`` —
else the real server's address), ``Connection: close``; interim 1xx responses
are skipped; the status must equal ``status``; when ``receive`` is set the
body (Content-Length, chunked, or up to close) is read up to ``BODY_LIMIT``
bytes and must contain ``receive`` — or match it as a regular expression with
``receive_regex`` (``re.search``, on the body decoded as UTF-8). Text beyond
the first ``BODY_LIMIT`` bytes is not seen. Redirects are not followed: a 301
is a status like any other.
"""

from __future__ import annotations

import re

from lvsmail.health.checkers.dialogue import CheckFailed, Dialogue, clip, hostport
from lvsmail.health.checkers.replies import (
    MAX_REPLY_BYTES,
    ReplyError,
    http_chunk_size,
    http_content_length,
    http_header_field,
    http_status_line,
)
from lvsmail.health.credentials import Credentials
from lvsmail.spec import CheckSpec

#: Most body bytes read for a ``receive`` match (the body is read only when ``receive`` is set; the rest is
#: never read: the connection is closed, ``Connection: close`` having been asked).
BODY_LIMIT = 64 * 1024
#: Most header lines accepted in one response (RFC 9112 section 5 sets no limit; servers send a few dozen).
#: Their bytes together are held to MAX_REPLY_BYTES.
MAX_HEADERS = 200
#: Most interim (1xx) responses skipped before the final one.
MAX_INTERIM = 10
_DEFAULT_PORT = {"http": 80, "https": 443}


def host_header(spec: CheckSpec, address: str, port: int) -> str:
    """The Host field: ``host`` or the address, with the port unless it is the scheme's default (RFC 9110 7.2)."""
    name = spec.host or address
    if port == _DEFAULT_PORT.get(spec.type):
        return f"[{name}]" if ":" in name else name
    return hostport(name, port)


async def _headers(dlg: Dialogue, waiting_for: str) -> dict[str, str]:
    """Header fields up to the empty line; names lower-cased, repeated fields joined with ', '."""
    headers: dict[str, str] = {}
    kept = 0
    for _ in range(MAX_HEADERS):
        line = await dlg.read_line(waiting_for)
        if not line:
            return headers
        kept += len(line)
        if kept > MAX_REPLY_BYTES:
            raise CheckFailed(f"header section longer than {MAX_REPLY_BYTES} bytes waiting for {waiting_for}")
        field = http_header_field(line)
        if field is not None:
            name, value = field
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise CheckFailed(f"more than {MAX_HEADERS} header lines waiting for {waiting_for}")


async def _body(dlg: Dialogue, headers: dict[str, str], waiting_for: str) -> bytes:
    """Up to BODY_LIMIT bytes of the body, however it is framed (RFC 9112 section 6.3)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while len(body) < BODY_LIMIT:
            try:
                size = http_chunk_size(await dlg.read_line(waiting_for))
            except ReplyError as exc:
                raise exc.waiting(waiting_for) from None
            if size == 0:
                break
            take = min(size, BODY_LIMIT - len(body))
            body += await dlg.read_exactly(take, waiting_for)
            if take < size:
                break  # enough read; the rest is never looked at
            if await dlg.read_line(waiting_for):  # the CRLF after the chunk data (RFC 9112 section 7.1)
                raise CheckFailed(f"chunk data longer than its size {size:#x} waiting for {waiting_for}")
        return bytes(body)
    if "content-length" in headers:
        try:
            length = http_content_length(headers["content-length"])
        except ReplyError as exc:
            raise exc.waiting(waiting_for) from None
        return await dlg.read_exactly(min(length, BODY_LIMIT), waiting_for)
    body = bytearray()  # no framing: the body runs to the end of the connection
    while len(body) < BODY_LIMIT:
        chunk = await dlg.read_some(BODY_LIMIT - len(body), waiting_for)
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def check(dlg: Dialogue, spec: CheckSpec, tls: str, credentials: Credentials | None) -> None:
    """The HTTP exchange; returns when the server passed, raises CheckFailed when not."""
    await dlg.connect()
    if tls == "implicit":
        await dlg.start_tls()
        dlg.did("TLS")
    what = f"{spec.method} {spec.path}"
    await dlg.send(f"{what} HTTP/1.1\r\nHost: {host_header(spec, dlg.address, dlg.port)}\r\n"
                   f"User-Agent: lvsmail-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n")
    for _ in range(MAX_INTERIM):
        line = await dlg.read_line(f"response to {what}")
        try:
            status, phrase = http_status_line(line)
        except ReplyError as exc:
            raise CheckFailed(f"{what}: {exc}") from None
        headers = await _headers(dlg, f"headers of the response to {what}")
        if not 100 <= status < 200:
            break
    else:
        raise CheckFailed(f"{what}: more than {MAX_INTERIM} interim responses")
    if status != spec.status:
        raise CheckFailed(f"{what}: status {status} {phrase} (expected {spec.status})".replace("  ", " "))
    dlg.did(f"{what} {status}")
    if spec.receive is not None and spec.method != "HEAD" and status not in (204, 304):
        body = await _body(dlg, headers, f"body of the response to {what}")
        text = body.decode("utf-8", "replace")
        found = re.search(spec.receive, text) if spec.receive_regex else spec.receive in text
        if not found:
            verb = "match" if spec.receive_regex else "contain"
            raise CheckFailed(f"{what}: status {status} but the body does not {verb} {clip(spec.receive, 80)!r} "
                              f"({len(body)} bytes read)")
        dlg.did("receive matched" if spec.receive_regex else "receive found")
    dlg.decided = True
