"""The real server's side of the registration API: register, drain, deregister, look up.

Every call goes to each director named in the cluster file's ``registration.directors``
(both members of a director pair keep the same membership, so a failover keeps it),
concurrently, and reports every director's answer.

API::

    register(spec, member, *, token=None, timeout=10.0, bind=True) -> list[Reply]
        Offer ``member`` (a Member: address, services, weight, optional ports and name) to every
        director. Idempotent: registering again replaces the entry and undoes a drain.
    drain(spec, address, *, timeout=None, interval=2.0, token=None, request_timeout=10.0,
          bind=True, on_progress=None) -> DrainResult
        Set the member's weight to 0 on every director (new connections stop, established ones
        continue), then poll until its active connections reach 0 everywhere or ``timeout``
        seconds pass (default: the section's drain_timeout). ``on_progress(active, waited)`` is
        called after each poll. A timeout is a result (``drained=False``), not an exception.
    deregister(spec, address, *, token=None, timeout=10.0, bind=True) -> list[Reply]
        Remove the member from every director; a director that does not know it counts as done.
    lookup(spec, address, *, token=None, timeout=10.0, bind=True) -> list[Reply]
        The member as each director sees it, with its active/inactive connections per service.

``token`` is a loaded key file (protocol.load_token); None reads ``spec.token_file``, which must be
root-only. ``bind=True`` sends from the member's own address, because a director accepts a request
about a member only from that member's address. Any failure (unreachable director, refusal, bad
reply) raises RegistrationError after every director was tried; its ``replies`` list what each
director said, so a caller can tell a half-done registration apart; a key file that cannot be used
raises it too, with no replies. Member() itself raises ProtocolError (a ValueError) for a description
no director would accept, before any traffic.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from lvsmail.registration.http import MAX_REPLY, HTTPError, encode_request, read_head
from lvsmail.registration.protocol import (
    Member, Token, TokenError, load_token, members_path, normalise_address, sign,
)
from lvsmail.spec import RegistrationSpec

__all__ = ["DrainResult", "Member", "RegistrationError", "Reply", "deregister", "drain", "lookup", "register"]


class RegistrationError(Exception):
    """At least one director did not do what was asked; ``replies`` holds every director's answer."""

    def __init__(self, message: str, replies: list["Reply"]):
        super().__init__(message)
        self.replies = replies


@dataclass(frozen=True)
class Reply:
    """One director's answer: HTTP status and JSON body, or ``error`` when there was no usable answer."""

    director: str
    status: int = 0
    body: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The director did what was asked."""
        return self.error is None and 200 <= self.status < 300

    def describe(self) -> str:
        """``director: reason`` in an operator's words."""
        if self.error is not None:
            return f"{self.director}: {self.error}"
        reason = self.body.get("error") or self.body.get("result") or ""
        return f"{self.director}: HTTP {self.status} {reason}".rstrip()


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: ``drained`` when every director reported 0 active connections in time."""

    drained: bool
    waited: float  # seconds from the drain request to the last poll
    active: dict[str, int]  # director -> active connections at the end
    inactive: dict[str, int]  # director -> inactive (e.g. TIME_WAIT) connections at the end


async def register(spec: RegistrationSpec, member: Member, *, token: Token | None = None,
                   timeout: float = 10.0, bind: bool = True) -> list[Reply]:
    """Register ``member`` with every director (see the module docstring)."""
    body = json.dumps(member.to_json()).encode()
    replies = await _each(spec, token, member.address, "POST", "/v1/members", body, timeout, bind)
    _raise_unless_ok("register", member.address, replies)
    return replies


async def deregister(spec: RegistrationSpec, address: str, *, token: Token | None = None,
                     timeout: float = 10.0, bind: bool = True) -> list[Reply]:
    """Remove the member from every director; 404 (not registered) counts as done."""
    address = normalise_address(address)
    replies = await _each(spec, token, address, "DELETE", members_path(address), b"", timeout, bind)
    _raise_unless_ok("deregister", address, replies, also_ok=(404,))
    return replies


async def lookup(spec: RegistrationSpec, address: str, *, token: Token | None = None,
                 timeout: float = 10.0, bind: bool = True) -> list[Reply]:
    """The member's entry and connection counts on every director."""
    address = normalise_address(address)
    replies = await _each(spec, token, address, "GET", members_path(address), b"", timeout, bind)
    _raise_unless_ok("look up", address, replies)
    return replies


async def drain(spec: RegistrationSpec, address: str, *, timeout: float | None = None, interval: float = 2.0,
                token: Token | None = None, request_timeout: float = 10.0, bind: bool = True,
                on_progress: Callable[[int, float], None] | None = None,
                clock: Callable[[], float] = time.monotonic) -> DrainResult:
    """Weight 0 on every director, then wait for active connections to end (see the module docstring)."""
    address = normalise_address(address)
    limit = spec.drain_timeout if timeout is None else timeout
    token = token or _load(spec)
    started = clock()
    replies = await _each(spec, token, address, "POST", members_path(address) + "/drain", b"",
                          request_timeout, bind)
    _raise_unless_ok("drain", address, replies)
    while True:
        active, inactive = _counts(replies)
        waited = clock() - started
        if on_progress is not None:
            on_progress(sum(active.values()), waited)
        if sum(active.values()) == 0:
            return DrainResult(True, waited, active, inactive)
        if waited >= limit:
            return DrainResult(False, waited, active, inactive)
        await asyncio.sleep(min(interval, max(0.0, limit - waited)))
        replies = await lookup(spec, address, token=token, timeout=request_timeout, bind=bind)


def _counts(replies: list[Reply]) -> tuple[dict[str, int], dict[str, int]]:
    """Per-director totals of the ``connections`` a director reports for the member."""
    active: dict[str, int] = {}
    inactive: dict[str, int] = {}
    for reply in replies:
        conns = reply.body.get("connections", {})
        active[reply.director] = int(conns.get("active", 0))
        inactive[reply.director] = int(conns.get("inactive", 0))
    return active, inactive


def _raise_unless_ok(what: str, address: str, replies: list[Reply], also_ok: tuple[int, ...] = ()) -> None:
    bad = [r for r in replies if not (r.ok or (r.error is None and r.status in also_ok))]
    if not replies:
        raise RegistrationError(f"{what} {address}: no directors in registration.directors", replies)
    if bad:
        raise RegistrationError(f"{what} {address} failed on {len(bad)} of {len(replies)} directors: "
                                + "; ".join(r.describe() for r in bad), replies)


async def _each(spec: RegistrationSpec, token: Token | None, member: str, method: str, path: str, body: bytes,
                timeout: float, bind: bool) -> list[Reply]:
    """Send one signed request to every director at once; never raises for one director's failure."""
    token = token or _load(spec)
    try:
        key = token.key_for(member)
    except TokenError as exc:
        raise RegistrationError(str(exc), []) from None
    context = _client_context(spec) if any(d.startswith("https:") for d in spec.directors) else None
    return list(await asyncio.gather(*(
        _request(director, key, member, method, path, body, timeout, member if bind else None, context)
        for director in spec.directors)))


def _load(spec: RegistrationSpec) -> Token:
    """The key file named by the section, as a RegistrationError when it cannot be used."""
    try:
        return load_token(spec.token_file)
    except TokenError as exc:
        raise RegistrationError(str(exc), []) from None


def _client_context(spec: RegistrationSpec) -> ssl.SSLContext:
    """Verify the directors' certificates against ``tls_ca`` (or the system's CAs)."""
    return ssl.create_default_context(cafile=spec.tls_ca)


async def _request(director: str, key: bytes, member: str, method: str, path: str, body: bytes,
                   timeout: float, source: str | None, context: ssl.SSLContext | None) -> Reply:
    """One signed request and its JSON reply, within ``timeout`` seconds."""
    url = urlsplit(director)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    headers = sign(key, member, method, path, body, time.time())
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context if url.scheme == "https" else None,
                local_addr=(source, 0) if source else None)
            netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(encode_request(method, netloc, path, headers, body))
            await writer.drain()
            head = await read_head(reader)
            parts = head.start.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                return Reply(director, error=f"not an HTTP reply: {head.start[:60]!r}")
            length = head.length()
            if length is None or length > MAX_REPLY:
                return Reply(director, int(parts[1]), error="reply without a usable Content-Length")
            data = await reader.readexactly(length)
    except TimeoutError:
        return Reply(director, error=f"no reply within {timeout:g} s")
    except (OSError, HTTPError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        return Reply(director, error=f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.close()
    try:
        payload = json.loads(data) if data else {}
    except ValueError:
        return Reply(director, int(parts[1]), error="reply is not JSON")
    if not isinstance(payload, dict):
        return Reply(director, int(parts[1]), error="reply is not a JSON object")
    return Reply(director, int(parts[1]), payload)
