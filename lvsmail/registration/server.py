"""The director's registration API: signed requests from real servers that join, drain and leave.

Threat model. The API listens only on the configured address, ideally on the
network between directors and real servers. Anyone who can reach it may send
requests; only holders of a key derived from the cluster secret can sign them.
Each check below refuses with a 4xx JSON error, logs the reason, and changes
nothing:

* a source address outside ``allowed_networks``: answered 403 at once, before a byte
  is read and before the connection counts against any limit (below);
* a request that does not arrive whole (TLS handshake, head and body together)
  within ``REQUEST_DEADLINE``: 408;
* body larger than ``max_body``: refused from its Content-Length, before it is read;
  a body that is not UTF-8 JSON, or nested deeper than ``bounded_json.MAX_DEPTH``: 400;
* missing or malformed authentication headers, a timestamp more than ``max_skew``
  seconds off, a signature that does not verify (compared in constant time), a
  nonce already seen within ``2 × max_skew`` (a replay);
* a request about a member that does not come from that member's own address, or a
  member address outside ``allowed_networks``: a real server can act only for itself;
* a service missing from the cluster file, a port its forwarding cannot reach, or an
  address the file already lists as a static real server.

Signing keys are per member (HMAC of the cluster secret and the address), so a real
server given only its own key cannot sign for another even if it spoofs a source
address on the LAN. A real server given the cluster secret itself can derive any key;
then the source-address check is what stops it, and that check is only as strong as
the network's protection against address spoofing. Without TLS, requests are
readable (they carry no secret, only signatures) but cannot be altered or replayed.
Nonces are remembered per director: a request seen on its way to one director could
be sent to the other within ``max_skew``, and only from the member's own address, so
it can repeat no more than what the member asked of both directors anyway.

No host can deny the API to the others. Connections are admitted in this order,
each step costing nothing shared until it passes: the source address must be in
``allowed_networks``; one source (an IPv4 address, or an IPv6 /64: see ``source_of``) may
have ``MAX_PER_SOURCE`` requests in progress
(more are answered 503 at once, and the client retries); at most ``MAX_CONNECTIONS``
are in progress, and when all are taken the *oldest request still being read*
gives way (answered 503) to the new one, so a host holding slow connections
loses them to members that send their request at once. A request being carried
out is never cut. Nothing waits in the listen backlog: every connection is
accepted and answered or served at once. A refusal is logged once per source and
reason every ``LOG_EVERY`` seconds, with a count of those not logged since.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from lvsmail.registration import bounded_json
from lvsmail.registration.http import HTTPError, encode_response, read_head
from lvsmail.registration.members import JoinedMember, MemberStore, Refusal, in_networks, validate_member
from lvsmail.registration.protocol import (
    H_MEMBER,
    H_NONCE,
    H_SIGNATURE,
    H_TIMESTAMP,
    NONCE_RE,
    SIGNATURE_RE,
    Member,
    ProtocolError,
    Token,
    normalise_address,
    signature,
)
from lvsmail.spec import ClusterSpec

log = logging.getLogger("lvsmail.registration")

#: Seconds a client gets for its whole request: TLS handshake, head and body together (one deadline).
REQUEST_DEADLINE = 10.0
#: Seconds a reply may take to leave; a peer that does not read it loses the connection.
WRITE_TIMEOUT = 10.0
#: Requests in progress at once; when all are taken the oldest one still being read gives way.
MAX_CONNECTIONS = 32
#: Requests in progress at once from one source (``source_of``); more from it are answered 503 at once.
MAX_PER_SOURCE = 4
#: IPv6 sources are counted per prefix of this length: a host is routinely given a whole /64 (RFC 4291
#: section 2.5.4, SLAAC and temporary addresses per RFC 8981), so counted per address it could take
#: every slot with as many addresses.
SOURCE_PREFIX_V6 = 64
#: Seconds between two log lines for the same refusal (source, reason).
LOG_EVERY = 10.0
#: Nonces remembered at most; beyond this the API answers 503 until old ones expire.
MAX_NONCES = 65536

#: (service name, active, inactive) for each of a member's destinations in the kernel.
Connections = Callable[[str], Awaitable[dict[str, tuple[int, int]]]]


class NonceCache:
    """Nonces of accepted signatures, each kept until no request carrying it could pass the clock check."""

    def __init__(self, limit: int = MAX_NONCES):
        self.limit = limit
        self._expiry: dict[str, float] = {}

    def seen(self, member: str, nonce: str, now: float, keep: float) -> bool:
        """Record ``nonce`` for ``keep`` seconds; True when it was already recorded (a replay)."""
        for key in [k for k, t in self._expiry.items() if t <= now]:
            del self._expiry[key]
        key = f"{member} {nonce}"
        if key in self._expiry:
            return True
        if len(self._expiry) >= self.limit:
            raise Refusal(503, "too many requests in the replay window; try again later")
        self._expiry[key] = now + keep
        return False


class _Slot:
    """One admitted connection: whom it is from, since when, and whether its request is still being read."""

    __slots__ = ("peer", "source", "started", "reading", "evicted", "deadline")

    def __init__(self, peer: str, started: float):
        self.peer = peer
        self.source = source_of(peer)
        self.started = started
        self.reading = True
        self.evicted = False
        self.deadline: asyncio.Timeout | None = None


class _RefusalLog:
    """Says whether to log a refusal: once per (source, reason) every ``every`` seconds, counting the rest.

    A host that reconnects as fast as it can, or repeats one bad request, would otherwise write a
    journal line per connection. Numbers in the reason (seconds waited, sizes) do not make it new.
    """

    LIMIT = 4096  # keys remembered; beyond, the table starts again (a flood of sources is logged anew)

    def __init__(self, every: float = LOG_EVERY):
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def admit(self, peer: str, reason: str, now: float) -> str | None:
        """None to stay quiet; else the suffix to log with (how many like it were not logged).

        The addresses of one IPv6 /64 are one source here too, so a host cannot write a line per address.
        """
        key = (source_of(peer), _DIGITS.sub("#", reason.replace(peer, "-")))
        last, quiet = self._last.get(key, (None, 0))
        if last is not None and now - last < self.every:
            self._last[key] = (last, quiet + 1)
            return None
        if len(self._last) >= self.LIMIT:
            self._last.clear()
        self._last[key] = (now, 0)
        return f" ({quiet} more like it not logged)" if quiet else ""


_DIGITS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Request:
    """One request as the handler sees it (the head already checked, the body read)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str


class RegistrationAPI:
    """Authenticates requests and turns them into membership changes.

    ``spec()`` returns the cluster file's current spec (its registration section and services),
    ``store`` holds the joined members, ``on_change(services)`` applies a change to the kernel
    and the health checks, ``connections(address)`` reads a member's connection counters.
    """

    def __init__(self, spec: Callable[[], ClusterSpec], token: Token, store: MemberStore,
                 on_change: Callable[[set[str]], Awaitable[None]], connections: Connections,
                 *, clock: Callable[[], float] = time.time):
        if token.secret is None:
            raise ValueError(f"key file {token.source}: a director needs the cluster secret (secret=), "
                             "not one member's key")
        self.spec = spec
        self.token = token
        self.store = store
        self.on_change = on_change
        self.connections = connections
        self.clock = clock
        self.nonces = NonceCache()
        self._lock = asyncio.Lock()  # one membership change at a time
        self._slots: dict[_Slot, None] = {}  # admitted connections, oldest first (insertion order)
        self._per_source: dict[str, int] = {}
        self._quiet = _RefusalLog()
        self._context: ssl.SSLContext | None = None
        self._servers: list[asyncio.base_events.Server] = []

    # -- the network side ---------------------------------------------------------------

    async def start(self, endpoints: Iterable[tuple[str, int]], context: ssl.SSLContext | None = None) -> None:
        """Listen on each ``(address, port)`` that is an address of this host, and only there.

        A shared cluster file lists both directors' addresses; each director binds its own and skips
        the other's (EADDRNOTAVAIL). OSError when none could be bound. With ``context``, TLS starts
        only after the source address was admitted, within the request's deadline.
        """
        skipped = []
        self._context = context
        for host, port in endpoints:
            try:
                server = await asyncio.start_server(self._connection, host, port, limit=4096,
                                                    reuse_address=True)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    await self.close()
                    raise
                skipped.append(host)
                continue
            self._servers.append(server)
            log.info("registration: API listening on %s port %d%s", host, port, " (TLS)" if context else "")
        if skipped:
            log.info("registration: not an address of this host, not listening there: %s", ", ".join(skipped))
        if not self._servers:
            raise OSError(errno.EADDRNOTAVAIL, "none of the listen addresses belongs to this host")

    async def close(self) -> None:
        """Stop listening and wait for requests in progress."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Admit (see the module docstring), read within the deadline, answer; never raises."""
        peer = _peer_address(writer.get_extra_info("peername"))
        slot = None
        clean = False
        try:
            refusal = self._admit(peer)
            if refusal is not None:
                more = self._quiet.admit(peer, refusal[1], time.monotonic())
                if more is not None:
                    log.warning("registration: refused connection from %s with %d: %s%s", peer, *refusal, more)
                if self._context is None:  # a TLS client could not read a plain answer: it is only closed
                    writer.write(encode_response(refusal[0], {"error": refusal[1]}))
                clean = True
                return
            slot = self._take_slot(peer)
            status, data = await self._serve(reader, peer, writer=writer, slot=slot)
            writer.write(encode_response(status, data))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
            clean = True
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("registration: connection from %s: %s", peer, exc or type(exc).__name__)
        except Exception:  # a bug must be a logged error, not asyncio's "Unhandled exception" with no answer
            log.exception("registration: connection from %s failed", peer)
        finally:
            if slot is not None:
                self._release(slot)
            if clean:
                writer.close()
            else:  # close() would wait for a peer that does not read to take what is still buffered
                writer.transport.abort()

    def _admit(self, peer: str) -> tuple[int, str] | None:
        """Why a connection from ``peer`` is refused before anything is read, or None to serve it.

        Checked in this order so that a refused host never occupies what others need: the network
        first, then this source's share, then the shared slots (where the oldest reader gives way).
        """
        reg = self.spec().registration
        if reg is None:
            return 503, "registration is not configured on this director"
        if not in_networks(peer, reg.allowed_networks):
            return 403, f"{peer} is outside the allowed networks ({', '.join(reg.allowed_networks)})"
        source = source_of(peer)
        if self._per_source.get(source, 0) >= MAX_PER_SOURCE:
            shown = peer if source == peer else f"{source} ({peer})"
            return 503, f"{MAX_PER_SOURCE} requests from {shown} already in progress"
        if len(self._slots) >= MAX_CONNECTIONS:
            victim = next((s for s in self._slots if s.reading), None)
            if victim is None:
                return 503, f"{MAX_CONNECTIONS} requests already being carried out"
            self._evict(victim)
        return None

    def _take_slot(self, peer: str) -> _Slot:
        slot = _Slot(peer, time.monotonic())
        self._slots[slot] = None
        self._per_source[slot.source] = self._per_source.get(slot.source, 0) + 1
        return slot

    def _release(self, slot: _Slot) -> None:
        """Give the slot back (once: an evicted connection gave it back when it was evicted)."""
        if self._slots.pop(slot, 0) is None:
            left = self._per_source[slot.source] - 1
            if left:
                self._per_source[slot.source] = left
            else:
                del self._per_source[slot.source]

    def _evict(self, slot: _Slot) -> None:
        """The oldest connection still being read gives way: its deadline is now (it answers 503)."""
        slot.evicted = True
        self._release(slot)
        if slot.deadline is not None:
            slot.deadline.reschedule(asyncio.get_running_loop().time())

    async def _serve(self, reader: asyncio.StreamReader, peer: str, *, writer: asyncio.StreamWriter | None = None,
                     slot: _Slot | None = None) -> tuple[int, dict]:
        """Read one request within REQUEST_DEADLINE (TLS handshake, head and body together) and answer it.

        ``writer`` is needed only to start TLS; ``slot`` is the admitted connection (a fresh one if none).
        """
        method = path = "-"
        slot = slot or _Slot(peer, time.monotonic())
        try:
            async with asyncio.timeout(REQUEST_DEADLINE) as slot.deadline:
                if slot.evicted:  # evicted before the deadline existed
                    raise TimeoutError
                if self._context is not None and writer is not None:
                    await writer.start_tls(self._context)
                head = await read_head(reader)
                parts = head.start.split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    raise HTTPError(400, "malformed request line")
                method, path = parts[0], parts[1]
                if "transfer-encoding" in head.headers:
                    raise HTTPError(411, "chunked bodies are not accepted; send Content-Length")
                length = head.length() or 0
                limit = self._section_limit()
                if length > limit:
                    raise HTTPError(413, f"body of {length} bytes exceeds max_body {limit}")
                body = await reader.readexactly(length) if length else b""
        except TimeoutError:
            if slot.evicted:
                return self._refuse(503, method, path, peer, f"gave way to a newer request after "
                                    f"{time.monotonic() - slot.started:.1f} s ({MAX_CONNECTIONS} in progress)")
            return self._refuse(408, method, path, peer, f"request not received within {REQUEST_DEADLINE:g} s")
        except asyncio.IncompleteReadError:
            return self._refuse(400, method, path, peer, "connection closed before the whole body arrived")
        except HTTPError as exc:
            return self._refuse(exc.status, method, path, peer, str(exc))
        finally:
            slot.reading = False
        return await self.handle(Request(method, path, head.headers, body, peer))

    def _section_limit(self) -> int:
        reg = self.spec().registration
        return reg.max_body if reg else 0

    # -- the decision -------------------------------------------------------------------

    async def handle(self, request: Request) -> tuple[int, dict]:
        """Authenticate, authorise and carry out one request; (status, JSON body)."""
        try:
            member = self._authenticate(request)
            return await self._dispatch(request, member)
        except Refusal as exc:
            return self._refuse(exc.status, request.method, request.path, request.peer, exc.reason)
        except Exception as exc:  # a bug: answered and logged with its traceback, never a dropped connection
            log.exception("registration: %r %r from %s failed", request.method[:16], request.path[:80],
                          request.peer)
            return 500, {"error": f"internal error: {type(exc).__name__}"}

    def _refuse(self, status: int, method: str, path: str, peer: str, reason: str) -> tuple[int, dict]:
        more = self._quiet.admit(peer, f"{method[:16]} {path[:80]} {reason}", time.monotonic())
        if more is not None:
            # repr: a request line may carry control characters that must not reach the log as such
            log.warning("registration: refused %r %r from %s: %s%s", method[:16], path[:80], peer, reason, more)
        return status, {"error": reason}

    def _authenticate(self, request: Request) -> str:
        """The member that signed ``request``, after every check of the signature and its freshness."""
        reg = self.spec().registration
        if reg is None:
            raise Refusal(503, "registration is not configured on this director")
        h = request.headers
        missing = [name for name in (H_MEMBER, H_TIMESTAMP, H_NONCE, H_SIGNATURE) if name not in h]
        if missing:
            raise Refusal(401, f"missing authentication header(s): {', '.join(missing)}")
        try:
            member = normalise_address(h[H_MEMBER])
        except ProtocolError:
            raise Refusal(401, f"{H_MEMBER} is not an IP address") from None
        if member != h[H_MEMBER]:
            raise Refusal(401, f"{H_MEMBER} must be in compressed form ({member})")
        if not h[H_TIMESTAMP].isdigit() or len(h[H_TIMESTAMP]) > 12:
            raise Refusal(401, f"{H_TIMESTAMP} must be Unix seconds")
        if not NONCE_RE.match(h[H_NONCE]) or not SIGNATURE_RE.match(h[H_SIGNATURE]):
            raise Refusal(401, "malformed nonce or signature (lower-case hex, 32 and 64 digits)")
        now = self.clock()
        skew = int(h[H_TIMESTAMP]) - now
        if abs(skew) > reg.max_skew:
            word = "ahead of" if skew > 0 else "behind"
            raise Refusal(401, f"timestamp is {abs(skew):.0f} s {word} the director's clock "
                               f"(max_skew {reg.max_skew:g} s); check NTP on both hosts")
        expected = signature(self.token.key_for(member), request.method, request.path, h[H_TIMESTAMP],
                             h[H_NONCE], member, request.body)
        if not hmac.compare_digest(expected, h[H_SIGNATURE]):
            raise Refusal(401, f"bad signature for member {member} (wrong key, or the request was altered)")
        # Only a verified request may occupy the nonce cache, so forgeries cannot fill it.
        if self.nonces.seen(member, h[H_NONCE], now, 2 * reg.max_skew):
            raise Refusal(401, "nonce already used: a replayed request")
        if request.peer != member:
            raise Refusal(403, f"signed for member {member} but sent from {request.peer}; "
                               "a member may act only from its own address")
        if not in_networks(member, reg.allowed_networks):
            raise Refusal(403, f"{member} is outside the allowed networks ({', '.join(reg.allowed_networks)})")
        return member

    async def _dispatch(self, request: Request, member: str) -> tuple[int, dict]:
        """Route an authenticated request to its action."""
        path, method = request.path, request.method
        if path == "/v1/members":
            if method != "POST":
                raise Refusal(405, f"{method} not allowed on /v1/members (POST registers)")
            return await self._register(request, member)
        if not path.startswith("/v1/members/"):
            raise Refusal(404, f"no such resource {path[:80]!r}")
        rest = path[len("/v1/members/"):]
        target, _, action = rest.partition("/")
        try:
            target = normalise_address(target)
        except ProtocolError:
            raise Refusal(404, f"{target[:60]!r} is not a member address") from None
        if target != member:
            raise Refusal(403, f"member {member} may not act on member {target}")
        routes = {("GET", ""): self._lookup, ("DELETE", ""): self._deregister, ("POST", "drain"): self._drain}
        action_fn = routes.get((method, action))
        if action_fn is None:
            raise Refusal(405 if action in ("", "drain") else 404, f"{method} {path[:80]} is not an action")
        return await action_fn(member)

    async def _register(self, request: Request, member_addr: str) -> tuple[int, dict]:
        try:
            member = Member.from_json(bounded_json.loads(request.body, max_bytes=self._section_limit()))
        except ValueError as exc:  # JSON errors, limits, bad UTF-8 and ProtocolError alike
            raise Refusal(422 if isinstance(exc, ProtocolError) else 400, f"bad registration: {exc}") from None
        if member.address != member_addr:
            raise Refusal(403, f"member {member_addr} may not register {member.address}")
        async with self._lock:
            validate_member(self.spec(), member)
            old = self.store.members.get(member.address)
            if old is not None and old.member == member and not old.drained:
                return 200, {"result": "unchanged", "member": old.to_json()}
            joined = JoinedMember(member, drained=False, since=old.since if old else self.clock())
            self._commit(lambda: self.store.put(joined))
            await self.on_change(set(member.services) | (set(old.member.services) if old else set()))
        log.info("registration: %s %s for %s (weight %d)", "updated" if old else "registered", member.address,
                 ", ".join(member.services), member.weight)
        return 200, {"result": "updated" if old else "registered", "member": joined.to_json()}

    async def _drain(self, address: str) -> tuple[int, dict]:
        async with self._lock:
            old = self._known(address)
            if not old.drained:
                self._commit(lambda: self.store.put(JoinedMember(old.member, True, old.since)))
                await self.on_change(set(old.member.services))
                log.info("registration: draining %s (weight 0)", address)
        return await self._lookup(address, result="draining")

    async def _deregister(self, address: str) -> tuple[int, dict]:
        async with self._lock:
            old = self._known(address)
            self._commit(lambda: self.store.remove(address))
            await self.on_change(set(old.member.services))
        log.info("registration: %s left %s", address, ", ".join(old.member.services))
        return 200, {"result": "deregistered", "member": old.to_json()}

    async def _lookup(self, address: str, result: str = "found") -> tuple[int, dict]:
        jm = self._known(address)
        per_service = await self.connections(address)
        services = {name: {"active": a, "inactive": i} for name, (a, i) in sorted(per_service.items())}
        totals = {"active": sum(a for a, _ in per_service.values()),
                  "inactive": sum(i for _, i in per_service.values()), "services": services}
        return 200, {"result": result, "member": jm.to_json(), "connections": totals}

    def _known(self, address: str) -> JoinedMember:
        jm = self.store.members.get(address)
        if jm is None:
            raise Refusal(404, f"{address} is not a registered member")
        return jm

    def _commit(self, change: Callable[[], None]) -> None:
        """Persist a change; when the state file cannot be written, refuse and keep everything as it was."""
        try:
            change()
        except OSError as exc:
            log.error("registration: cannot write %s: %s", self.store.path, exc)
            # The reason already names the cause, and the line above logs it whole; a Refusal becomes an
            # HTTP answer, never a traceback: from None.
            raise Refusal(503, f"the director cannot save its members ({exc.strerror or exc}); "
                          "nothing changed") from None


def _peer_address(peername) -> str:
    """The client's address, with IPv4-mapped IPv6 (dual-stack sockets) shown as IPv4."""
    if not peername:
        return "?"
    addr = ipaddress.ip_address(peername[0].split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.compressed


def source_of(peer: str) -> str:
    """What a per-source limit counts ``peer`` as: an IPv4 address itself, an IPv6 address its /64."""
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:  # "?" when the socket had no peer name: counted as itself
        return peer
    if addr.version == 4:
        return peer
    return ipaddress.IPv6Network((addr, SOURCE_PREFIX_V6), strict=False).compressed


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS for the API from a certificate chain and its key (PEM files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
