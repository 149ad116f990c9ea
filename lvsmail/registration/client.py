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

``timeout`` bounds each director's whole exchange, retries included: a 503 (the director is busy
or cannot save its members) and a connection that fails or closes without a reply are tried again
after a growing, jittered pause (``RETRY_FIRST`` doubling up to ``RETRY_MAX`` seconds) while time
is left; every request is idempotent (registering again is "unchanged", deregistering a member
already gone is 404, which counts as done), so a retry never does more than the first attempt.
A certificate that does not verify, and every other status, is final at once.

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
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lvsmail.registration import bounded_json
from lvsmail.registration.http import MAX_REPLY, HTTPError, encode_request, read_head
from lvsmail.registration.protocol import (
    Member,
    Token,
    TokenError,
    load_token,
    members_path,
    normalise_address,
    sign,
)
from lvsmail.spec import RegistrationSpec

#: First pause before a retry, in seconds; it doubles (with jitter) up to RETRY_MAX.
RETRY_FIRST = 0.2
RETRY_MAX = 2.0

__all__ = ["DrainResult", "Member", "RegistrationError", "Reply", "deregister", "drain", "lookup", "register"]


class RegistrationError(Exception):
    """At least one director did not do what was asked; ``replies`` holds every director's answer."""

    def __init__(self, message: str, replies: list[Reply]):
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
    """One signed request and its JSON reply, retried on 503 and failed connections, within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    pause = RETRY_FIRST
    attempts = 0
    while True:
        attempts += 1
        reply, retry = await _attempt(director, key, member, method, path, body, max(0.0, end - loop.time()),
                                      source, context)
        wait = pause * random.uniform(0.5, 1.0)
        if not retry or loop.time() + wait >= end:
            if attempts > 1 and not reply.ok:
                reply = _after(reply, attempts, timeout)
            return reply
        await asyncio.sleep(wait)
        pause = min(pause * 2, RETRY_MAX)


def _after(reply: Reply, attempts: int, timeout: float) -> Reply:
    """The last reply, saying that it came after ``attempts`` tries within ``timeout`` seconds."""
    note = f" (after {attempts} attempts in {timeout:g} s)"
    if reply.error is not None:
        return Reply(reply.director, reply.status, reply.body, reply.error + note)
    body = dict(reply.body, error=str(reply.body.get("error", "")) + note) if "error" in reply.body else reply.body
    return Reply(reply.director, reply.status, body)


async def _attempt(director: str, key: bytes, member: str, method: str, path: str, body: bytes,
                   timeout: float, source: str | None, context: ssl.SSLContext | None) -> tuple[Reply, bool]:
    """One signed request (a fresh nonce each time) and its reply; True when it is worth trying again."""
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
                return Reply(director, error=f"not an HTTP reply: {head.start[:60]!r}"), False
            length = head.length()
            if length is None or length > MAX_REPLY:
                return Reply(director, int(parts[1]), error="reply without a usable Content-Length"), False
            data = await reader.readexactly(length)
    except TimeoutError:
        return Reply(director, error=f"no reply within {timeout:g} s"), False
    except ssl.SSLCertVerificationError as exc:  # an OSError too, but no retry makes a certificate valid
        return Reply(director, error=f"{type(exc).__name__}: {exc}"), False
    except (OSError, asyncio.IncompleteReadError) as exc:  # refused, reset, closed without a reply
        return Reply(director, error=f"{type(exc).__name__}: {exc}"), True
    except HTTPError as exc:
        # "empty request" here means the director closed before it answered (it was stopping, or gave way)
        return Reply(director, error=f"{type(exc).__name__}: {exc}"), str(exc) == "empty request"
    finally:
        if writer is not None:
            writer.close()
    status = int(parts[1])
    try:
        payload = bounded_json.loads(data, max_bytes=MAX_REPLY) if data else {}
    except ValueError:
        return Reply(director, status, error="reply is not JSON"), False
    if not isinstance(payload, dict):
        return Reply(director, status, error="reply is not a JSON object"), False
    return Reply(director, status, payload), status == 503
