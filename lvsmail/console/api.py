"""The director's local API: a UNIX socket that ``status``, the dashboard and the operator commands use.

The client side (finding the socket, a blocking connection) is
:mod:`lvsmail.console.client`. The server reads the director only through its
view (:mod:`lvsmail.console.view`).

The socket is ``<state_dir>/<stem>.sock`` (the cluster file's name without
its suffix; where that directory cannot hold a socket, as on the lab VM's
9p share or with a path too long for AF_UNIX, it is in /run/lvsmail-api and
``<stem>.sock.path`` names it), mode 0600, and a connection is served only when the peer's
credentials (SO_PEERCRED) say root or the director's own user: draining a
mail server is an administrator's act. Nothing listens on the network.

Protocol: newline-delimited JSON, UTF-8. The client sends one request object
per line and gets one reply object per line, in order, on the same
connection::

    {"request": "status", "events": 20, "services": "smtp", "table": false, "mine": false}
    {"request": "drain",  "target": "192.0.2.20", "service": "smtp"}
    {"request": "enable", "target": "mx2"}
    {"request": "weight", "target": "192.0.2.20:25", "weight": 3}
    {"request": "recheck", "target": "192.0.2.20"}
    {"request": "reload"}
    {"request": "events", "recent": 10}

``target`` is an address, ``address:port`` (``[v6]:port``) or a real
server's name; ``service`` (optional) restricts it to one service by name.
A reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": "why"}``; a bad
request never changes anything. ``status`` answers with the snapshot (see
:mod:`lvsmail.console.snapshot`), and with ``"table": true`` also the
kernel-table view ``lvsmail director status`` prints (its JSON and text;
``"mine": true`` keeps only this director's services; ``services`` keeps
in the snapshot only the services whose name contains that text). ``drain``/``enable``/``weight`` answer
with the servers they changed, after the kernel has the new weights.
``events`` answers ``{"ok": true, "recent": [...]}`` and then keeps the
connection for the stream: one ``{"event": {...}}`` line per health
transition, VRRP transition, kernel change or operator action, and
``{"dropped": n}`` when a slow reader lost events.

Limits (the socket is root-only, but a stuck or buggy client must not wedge the
director): a request line is at most ``MAX_LINE`` bytes of UTF-8 JSON nested at most
``bounded_json.MAX_DEPTH`` deep; once its first byte arrives the rest must follow
within ``LINE_DEADLINE`` seconds, and a connection idle for ``IDLE_TIMEOUT`` is
closed; a reply or event that the client does not take within ``WRITE_TIMEOUT``
ends the connection. At most ``MAX_CLIENTS`` connections are open; a new one
makes the one idle the longest give way (it is told so), and only when every
connection is busy or streaming is the new one refused. Every malformed request
gets ``{"ok": false, "error": ...}``; nothing a client sends ends in an exception
that is not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from pathlib import Path

from lvsmail.console import overrides as ov
from lvsmail.console.client import APIError
from lvsmail.console.events import EventHub
from lvsmail.console.snapshot import snapshot, table_status
from lvsmail.console.view import DirectorView
from lvsmail.registration import bounded_json
from lvsmail.statefiles import FALLBACK_SOCKET_DIR, write_text

log = logging.getLogger("lvsmail.director.api")

#: Longest request line accepted.
MAX_LINE = 65536
#: Seconds a connection may wait between requests (the dashboard asks every few seconds).
IDLE_TIMEOUT = 300.0
#: Seconds from the first byte of a request line to its newline.
LINE_DEADLINE = 10.0
#: Seconds a reply or an event may take to leave.
WRITE_TIMEOUT = 10.0
#: Connections open at once; beyond, the one idle the longest gives way.
MAX_CLIENTS = 64
REQUESTS = ("status", "drain", "enable", "weight", "recheck", "reload", "events")


#: Where a director listens when its state directory cannot hold a socket (see APIServer.start).
FALLBACK_DIR = FALLBACK_SOCKET_DIR


def parse_request(line: bytes, events_max: int) -> dict:
    """One request line as the server reads it: the request object with its arguments checked.

    ``events_max`` is the event buffer's size (the largest ``events``/``recent``).
    Raises APIError, saying what is wrong, for anything else: invalid UTF-8 or
    JSON, nesting deeper than ``bounded_json.MAX_DEPTH``, a line over ``MAX_LINE``,
    not an object, an unknown request, an argument of the wrong type or range.
    Whether a ``target`` names a real server is the director's to say (LookupError).
    """
    try:
        req = bounded_json.loads(line, max_bytes=MAX_LINE)
    except ValueError as exc:  # JSONLimitError, JSONDecodeError, UnicodeDecodeError
        raise APIError(str(exc)) from None
    return check_request(req, events_max)


def check_request(req, events_max: int) -> dict:
    """A decoded request with its known arguments checked and defaulted; APIError as ``parse_request``."""
    if not isinstance(req, dict):
        raise APIError("a request is a JSON object")
    what = req.get("request")
    if what not in REQUESTS:
        raise APIError(f"unknown request {_short(what)}; expected one of {', '.join(REQUESTS)}")
    out: dict = {"request": what}
    if what == "status":
        out["events"] = _int(req.get("events", 20), "events", 0, events_max)
        out["services"] = None if req.get("services") is None else _text(req["services"], "services")
        out["table"], out["mine"] = bool(req.get("table")), bool(req.get("mine"))
    elif what == "events":
        out["recent"] = _int(req.get("recent", 0), "recent", 0, events_max)
    elif what != "reload":
        out["target"] = _text(req.get("target"), "target")
        out["service"] = None if req.get("service") is None else _text(req["service"], "service")
        if what == "weight":
            out["weight"] = _int(req.get("weight"), "weight", 0, ov.MAX_WEIGHT)
    return out


class AnotherDirector(OSError):
    """A live director already answers on the socket path."""


class APIServer:
    """The socket, its connections, and the metrics exporter.

    ``view`` is all it knows of the director; ``hub`` is the director's event
    stream, which it serves and to which it adds the operators' actions.
    """

    def __init__(self, view: DirectorView, hub: EventHub) -> None:
        from lvsmail.console.metrics import Exporter

        self.view = view
        self.hub = hub
        self.path = view.state.socket
        self.server: asyncio.AbstractServer | None = None
        self.metrics = Exporter(view)  # its ``observe`` counts check latencies; the root routes results to it
        self._clients: set[asyncio.Task] = set()
        self._idle: dict[asyncio.StreamWriter, None] = {}  # connections waiting for a request, longest first

    async def start(self) -> None:
        """Listen (replacing a dead predecessor's socket), then start metrics (never without the socket)."""
        try:
            await self._listen(self.path)
        except OSError as exc:
            if isinstance(exc, AnotherDirector):
                raise
            # A state directory on a file system without sockets (9p or NFS, as the lab VM's shared
            # directory): listen on tmpfs instead and leave the path where clients look.
            other = self.view.state.fallback_socket(FALLBACK_DIR)
            log.warning("api: cannot listen in %s (%s); listening on %s instead", self.path, exc, other)
            await self._listen(other)
            self.path = other
            _write_pointer(self.view.state.socket_pointer, other)
        self.metrics.configure(self.view.spec())
        log.info("api: listening on %s", self.path)

    async def _listen(self, path: Path) -> None:
        """Listen on ``path`` (mode 0600), replacing a dead predecessor's socket."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if _alive(path):
                raise AnotherDirector(f"another director answers on {path}")
            path.unlink()
        old = os.umask(0o177)  # the socket is created 0600: no window in which others may connect
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop listening, end the streams, stop metrics, remove the socket."""
        if self.server is not None:
            self.server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self.server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if self.path != self.view.state.socket:
                with contextlib.suppress(OSError):
                    self.view.state.socket_pointer.unlink()
        self.metrics.stop()

    def reloaded(self, spec) -> None:
        """After a reload: follow ``metrics:``, and forget overrides of real servers the file no longer has."""
        self.metrics.configure(spec)
        store = self.view.overrides
        present = {(s.name, rs.address, rs.port) for s in self.view.effective().services for rs in s.realservers}
        stale = [k for k in store.items if k not in present]
        if stale:
            try:
                store.clear(stale)
            except OSError as exc:
                log.error("api: cannot forget the overrides of removed real servers: %s", exc)
                return
            for k in stale:
                self.hub.publish("operator", f"override of {k[0]} {_hp(k[1], k[2])} dropped: no longer in the file")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests answered in order until the client leaves; never raises."""
        task = asyncio.current_task()
        self._clients.add(task)
        clean = True
        try:
            if not _allowed(writer):
                await _send(writer, {"ok": False, "error": "permission denied: root only"})
                return
            if len(self._clients) > MAX_CLIENTS and not self._make_room():
                await _send(writer, {"ok": False, "error": f"{MAX_CLIENTS} connections busy; try again"})
                return
            while True:
                line = await self._request_line(reader, writer)
                if line is None:
                    return
                if not line.strip():
                    continue
                try:
                    req = parse_request(line, self.hub.recent.maxlen)
                    if req["request"] == "events":
                        await self._stream(req, reader, writer)
                        return
                    reply = {"ok": True, **await self.handle(req)}
                except (ValueError, APIError, LookupError) as exc:
                    reply = {"ok": False, "error": str(exc) if not isinstance(exc, KeyError) else exc.args[0]}
                except (ConnectionError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # a bug here must not kill the connection silently: say it, log it
                    log.exception("api: request %r failed", line[:200])
                    reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
                await _send(writer, reply)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            clean = False  # the client went away, or does not take its replies: nothing more to say
        except Exception:  # never asyncio's "Unhandled exception in client_connected_cb"
            clean = False
            log.exception("api: connection failed")
        finally:
            self._idle.pop(writer, None)
            self._clients.discard(task)
            if clean:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await writer.wait_closed()
            else:  # close() would wait for a client that does not read to take what is buffered
                writer.transport.abort()

    async def _request_line(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The next request line, or None when the client left, idled out or was told why not (then close)."""
        self._idle[writer] = None
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                first = await reader.read(1)
        except TimeoutError:
            await _send(writer, {"ok": False, "error": f"idle for {IDLE_TIMEOUT:g} s; connection closed"})
            return None
        finally:
            self._idle.pop(writer, None)
        if not first:
            return None
        try:
            async with asyncio.timeout(LINE_DEADLINE):
                rest = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            await _send(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
            return None
        except TimeoutError:
            await _send(writer, {"ok": False, "error": f"request line not complete within {LINE_DEADLINE:g} s"})
            return None
        except asyncio.IncompleteReadError as exc:  # a last line without its newline: answered like any other
            rest = exc.partial
        return first + rest

    def _make_room(self) -> bool:
        """Close the connection idle the longest, for a new one; False when none is idle."""
        for writer in self._idle:
            log.warning("api: %d connections open; closing the one idle the longest", len(self._clients))
            writer.write(json.dumps({"ok": False, "error": "connection closed to make room for a new one"}
                                    ).encode() + b"\n")
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # it does not even take what it was sent
            else:
                writer.close()
            self._idle.pop(writer)
            return True
        return False

    async def handle(self, req: dict) -> dict:
        """Answer one request (everything but ``events``); APIError/LookupError/ValueError refuse it."""
        req = check_request(req, self.hub.recent.maxlen)
        what = req["request"]
        view = self.view
        if what == "status":
            table = await view.table(counters=True)
            reply = {"status": await snapshot(view, events=req["events"], table=table, only=req["services"] or "",
                                              hub=self.hub)}
            if req["table"]:  # also the kernel-table view `director status` prints
                reply["table"] = await table_status(view, table, mine=req["mine"])
            return reply
        if what == "reload":
            view.request_reload()
            self.hub.publish("operator", "reload requested through the API")
            return {"requested": True}
        keys = ov.resolve(view.effective(), req["target"], req["service"])
        if what == "recheck":
            return {"results": [await self._recheck(k) for k in keys]}
        store = view.overrides
        try:
            if what == "drain":
                changed = [o.key for o in store.set(keys, "drain", 0)]
                words = "drained"
            elif what == "weight":
                w = req["weight"]
                changed = [o.key for o in store.set(keys, "weight", w)]
                words = f"weight {w}"
            else:
                changed = [o.key for o in store.clear(keys)]
                words = "enabled"
        except OSError as exc:
            raise APIError(f"cannot save the override in {store.path}: {exc}") from None
        for k in keys:
            self.hub.publish("operator", f"{k[0]} {_hp(k[1], k[2])} {words}", service=k[0], address=k[1], port=k[2])
        await view.apply(f"operator: {words}")
        snap = await snapshot(view, events=0)
        rows = {(s["name"], r["address"], r["port"]): r for s in snap["services"] for r in s["realservers"]}
        return {"servers": [_brief(k, rows.get(k)) for k in keys], "changed": len(changed)}

    async def _recheck(self, key) -> dict:
        """Run one server's check now through the engine (the verdict counts like a scheduled one)."""
        try:
            result, state = await self.view.recheck(key)
        except KeyError:
            raise APIError(f"{key[0]} {_hp(key[1], key[2])} has no health check") from None
        self.hub.publish("operator", f"{key[0]} {_hp(key[1], key[2])} re-checked: {result}", service=key[0],
                         address=key[1], port=key[2])
        return {"service": key[0], "address": key[1], "port": key[2], "ok": result.ok,
                "inconclusive": result.inconclusive, "reason": result.reason, "latency": result.latency,
                "up": state.up}

    async def _stream(self, req: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send events until the client closes its side (noticed at once, not at the next event)."""
        n = req["recent"]
        queue = self.hub.subscribe()
        gone = asyncio.ensure_future(_until_eof(reader))  # the client sends nothing more; EOF means it left
        try:
            await _send(writer, {"ok": True, "recent": self.hub.last(n)})
            while True:
                got = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    got.cancel()
                    return
                lost = self.hub.dropped(queue)
                if lost:
                    await _send(writer, {"dropped": lost})
                await _send(writer, {"event": got.result()})
        finally:
            gone.cancel()
            self.hub.unsubscribe(queue)


async def start_api(view: DirectorView, hub: EventHub) -> APIServer | None:
    """Start the local API on a director's view and event hub; a failure is logged, the director runs without it."""
    api = APIServer(view, hub)
    try:
        await api.start()
    except OSError as exc:
        log.error("api: not started: %s", exc)
        await api.close()
        return None
    return api


def _brief(key, row: dict | None) -> dict:
    out = {"service": key[0], "address": key[1], "port": key[2]}
    if row is not None:
        out.update({k: row[k] for k in ("health", "configured_weight", "effective_weight", "active", "inactive")})
    return out


def _hp(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _text(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise APIError(f"{name} must be a non-empty string")
    return value.strip()


def _int(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise APIError(f"{name} must be an integer {low}..{high}, got {_short(value)}")
    return value


def _short(value) -> str:
    """A client's value quoted in an error, at most 80 characters (a 4000-digit number is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def _send(writer: asyncio.StreamWriter, obj: dict) -> None:
    """One reply line; TimeoutError when the client does not take it within WRITE_TIMEOUT."""
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Wait for the client to close its side, discarding what it sends meanwhile (never buffering it)."""
    while await reader.read(4096):
        pass


def _allowed(writer: asyncio.StreamWriter) -> bool:
    """Root, or the director's own user (tests, an unprivileged lab director)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def _alive(path: Path) -> bool:
    """Whether something accepts connections on ``path`` (a stale socket of a killed director does not)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _write_pointer(path: Path, target: Path) -> None:
    """Name the fallback socket in the state directory (replaced atomically)."""
    write_text(path, str(target) + "\n")
