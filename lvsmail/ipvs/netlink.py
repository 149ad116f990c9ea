"""The kernel side of the IPVS boundary: generic netlink over a plain socket.

Requests are pipelined: many are packed into one datagram and only the last of
each batch asks for an ACK. The kernel processes a datagram's messages in order
and always answers a failing one with an error, so silence before the final ACK
means success. That turns N round trips into N/batch, which is what lets a
Python director program 16,000 real servers about as fast as ``ipvsadm -R``.

The IPVS table is per network namespace: a backend talks to the namespace of
the thread that opened it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

from lvsmail.ipvs import wire
from lvsmail.ipvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    EditDest,
    EditService,
    IPVSError,
    Op,
    ServiceEntry,
    ServiceKey,
    ServiceSettings,
    SyncDaemon,
    Table,
    Timeouts,
)

log = logging.getLogger(__name__)

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error replies do not echo the whole request back
NETLINK_EXT_ACK = 11
_BUFFER = 8 << 20  # socket buffers: a full batch of replies must fit
_BATCH_BYTES = 512 << 10  # at most this much request data per datagram
_REPLY_TIMEOUT = 60.0  # seconds; a kernel that never answers is an error, not a hang
_INLINE_OPS = 64  # below this, work runs on the event loop; above, in a thread

_COMMANDS = {
    AddService: wire.CMD_NEW_SERVICE,
    EditService: wire.CMD_SET_SERVICE,
    DelService: wire.CMD_DEL_SERVICE,
    AddDest: wire.CMD_NEW_DEST,
    EditDest: wire.CMD_SET_DEST,
    DelDest: wire.CMD_DEL_DEST,
}


class IPVSUnavailable(RuntimeError):
    """The kernel has no IPVS (module not loadable) or we lack the privilege to use it."""


#: Called with a request's generic netlink command and each raw datagram the kernel answers it with.
ReplyHook = Callable[[int, bytes], None]


class NetlinkIPVS:
    """IPVSBackend on the running kernel."""

    def __init__(self, on_reply: ReplyHook | None = None) -> None:
        """``on_reply`` sees every reply datagram as received (the golden-bytes tests record them)."""
        self.on_reply = on_reply
        self._sock: socket.socket | None = None
        self._family = 0
        self._seq = 0
        self._buf = bytearray(1 << 20)
        self._dests = wire.DestDecoder()
        self._lock = asyncio.Lock()

    # -- public, async --------------------------------------------------------------

    async def dump(self, counters: bool = False) -> Table:
        """Read every service and real server (one dest dump per service, as the kernel requires)."""
        async with self._lock:
            return await asyncio.to_thread(self.dump_sync, counters)

    async def execute(self, ops: Sequence[Op]) -> list[int]:
        """Apply operations in order, pipelined; return one errno per operation."""
        async with self._lock:
            if len(ops) <= _INLINE_OPS:
                return self.execute_sync(ops)
            return await asyncio.to_thread(self.execute_sync, ops)

    async def get_timeouts(self) -> Timeouts:
        """Read the tcp/tcpfin/udp connection timeouts."""
        async with self._lock:
            return self.get_timeouts_sync()

    async def set_timeouts(self, timeouts: Timeouts) -> None:
        """Set connection timeouts; fields that are 0 stay unchanged."""
        async with self._lock:
            self.set_timeouts_sync(timeouts)

    async def daemons(self) -> list[SyncDaemon]:
        """The running connection-sync daemons, as the kernel reports them."""
        async with self._lock:
            return self.daemons_sync()

    async def start_daemon(self, daemon: SyncDaemon) -> None:
        """Start a connection-sync daemon (the kernel starts its threads before it answers)."""
        async with self._lock:
            await asyncio.to_thread(self.start_daemon_sync, daemon)

    async def stop_daemon(self, state: str) -> None:
        """Stop the master or the backup sync daemon (waits for its threads to end)."""
        async with self._lock:
            await asyncio.to_thread(self.stop_daemon_sync, state)

    async def close(self) -> None:
        """Release the netlink socket."""
        self.close_sync()

    # -- synchronous core (used directly by one-shot commands and benchmarks) ---------

    def open(self) -> None:
        """Open the socket and look up the IPVS family id, loading ip_vs if needed."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        for force, plain in ((33, socket.SO_SNDBUF), (32, socket.SO_RCVBUF)):  # SO_*BUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, _BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, _BUFFER)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.settimeout(_REPLY_TIMEOUT)
        sock.bind((0, 0))
        self._sock = sock
        fam = self._lookup_family()
        if fam is None:
            # The IPVS family appears when ip_vs is loaded; the kernel does not autoload it.
            try:
                subprocess.run(["modprobe", "ip_vs"], check=False, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.debug("modprobe ip_vs failed: %s", exc)
            fam = self._lookup_family()
        if fam is None:
            self.close_sync()
            raise IPVSUnavailable("this kernel has no IPVS "
                                  "(generic netlink family 'IPVS' not found; modprobe ip_vs failed)")
        self._family = fam

    def close_sync(self) -> None:
        """Close the socket; the next call reopens it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute_sync(self, ops: Sequence[Op]) -> list[int]:
        """Blocking form of :meth:`execute`."""
        self.open()
        results = [0] * len(ops)
        start = 0
        while start < len(ops):
            chunk: list[bytes] = []
            size = 0
            end = start
            while end < len(ops) and size < _BATCH_BYTES:
                msg = self._encode(ops[end], self._next_seq())
                chunk.append(msg)
                size += len(msg)
                end += 1
            first_seq = self._seq - len(chunk) + 1
            chunk[-1] = _with_ack(chunk[-1])  # the barrier: its ACK means the batch is done
            cmds = ({first_seq + i: _COMMANDS[type(op)] for i, op in enumerate(ops[start:end])}
                    if self.on_reply is not None else {})  # only the reply hook reads it
            for seq, err in self._send_batch(b"".join(chunk), self._seq, cmds):
                idx = start + (seq - first_seq)
                if start <= idx < end:
                    results[idx] = err
            start = end
        return results

    def dump_sync(self, counters: bool = False) -> Table:
        """Blocking form of :meth:`dump`."""
        self.open()
        table: Table = {}
        for buf, payload, end in self._dump(wire.CMD_GET_SERVICE, b""):
            decoded = wire.decode_service(buf, payload, end, counters)
            if decoded:
                table[decoded[0]] = decoded[1]
        for key, entry in table.items():
            self._fill_dests(key, entry, counters)
        return table

    def dests_sync(self, key: ServiceKey, counters: bool = False) -> ServiceEntry:
        """Read one service's real servers (its settings are not fetched); empty if it is gone."""
        self.open()
        entry = ServiceEntry(settings=ServiceSettings())
        self._fill_dests(key, entry, counters)
        return entry

    def get_timeouts_sync(self) -> Timeouts:
        """Blocking form of :meth:`get_timeouts`."""
        self.open()
        seq = self._next_seq()
        self._sendall(wire.message(self._family, wire.CMD_GET_CONFIG, b"", seq))
        for buf, kind, _flags, rseq, payload, end in self._replies(wire.CMD_GET_CONFIG):
            if rseq != seq:
                continue
            if kind == wire.NLMSG_ERROR:
                raise OSError(wire.error_code(buf, payload), "IPVS GET_CONFIG failed")
            return wire.decode_timeouts(buf, payload, end)
        raise OSError(errno.EIO, "no reply to IPVS GET_CONFIG")

    def set_timeouts_sync(self, timeouts: Timeouts) -> None:
        """Blocking form of :meth:`set_timeouts`."""
        self.open()
        seq = self._next_seq()
        msg = wire.message(self._family, wire.CMD_SET_CONFIG, wire.timeouts_body(timeouts), seq,
                           wire.NLM_F_REQUEST | wire.NLM_F_ACK)
        for rseq, err in self._send_batch(msg, seq, {seq: wire.CMD_SET_CONFIG}):
            if rseq == seq and err:
                raise OSError(err, f"IPVS SET_CONFIG {timeouts} failed")

    def daemons_sync(self) -> list[SyncDaemon]:
        """Blocking form of :meth:`daemons` (GET_DAEMON is a dump: one message per daemon)."""
        self.open()
        found = (wire.decode_daemon(buf, payload, end) for buf, payload, end in self._dump(wire.CMD_GET_DAEMON, b""))
        return [d for d in found if d is not None]

    def start_daemon_sync(self, daemon: SyncDaemon) -> None:
        """Blocking form of :meth:`start_daemon`."""
        self._daemon_request(wire.CMD_NEW_DAEMON, wire.daemon_attr(daemon), daemon)

    def stop_daemon_sync(self, state: str) -> None:
        """Blocking form of :meth:`stop_daemon`."""
        self._daemon_request(wire.CMD_DEL_DAEMON, wire.daemon_state_attr(state), state)

    # -- internals ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _encode(self, op: Op, seq: int) -> bytes:
        cmd = _COMMANDS[type(op)]
        if isinstance(op, (AddService, EditService)):
            body = wire.service_attr(op.key, op.settings)
        elif isinstance(op, DelService):
            body = wire.service_attr(op.key, None)
        elif isinstance(op, (AddDest, EditDest)):
            body = wire.service_attr(op.service, None) + wire.dest_attr(op.key, op.settings)
        else:
            body = wire.service_attr(op.service, None) + wire.dest_attr(op.key, None)
        return wire.message(self._family, cmd, body, seq)

    def _daemon_request(self, cmd: int, body: bytes, what: SyncDaemon | str) -> None:
        """One acknowledged daemon command; IPVSError carrying the kernel's errno on refusal."""
        self.open()
        seq = self._next_seq()
        msg = wire.message(self._family, cmd, body, seq, wire.NLM_F_REQUEST | wire.NLM_F_ACK)
        for rseq, err in self._send_batch(msg, seq, {seq: cmd}):
            if rseq == seq and err:
                raise IPVSError(what, err)

    def _sendall(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendto(data, (0, 0))

    def _send_batch(self, data: bytes, barrier_seq: int, cmds: dict[int, int]):
        """Send one datagram and yield (seq, errno) for every error, ending with the barrier's ACK.

        ``cmds`` maps each request's sequence number to its command, for :attr:`on_reply`
        (empty without a hook: nothing else reads it).
        """
        self._sendall(data)
        for buf, kind, _flags, seq, payload, _end in self._replies(cmds):
            if kind != wire.NLMSG_ERROR:
                continue
            err = wire.error_code(buf, payload)
            if err:
                yield seq, err
            if seq == barrier_seq:
                return

    def _replies(self, cmd: int | dict[int, int]):
        """Yield parsed messages from the socket until the caller stops iterating.

        ``cmd`` is the request's command, or (a pipelined batch) a map from sequence number to
        command: the datagram is then reported under the command its first message answers.
        """
        assert self._sock is not None
        buf = self._buf
        while True:
            n = self._sock.recv_into(buf)
            if self.on_reply is not None:
                self._report(cmd, buf, n)
            for kind, flags, seq, payload, end in wire.iter_messages(buf, n):
                yield buf, kind, flags, seq, payload, end

    def _report(self, cmd: int | dict[int, int], buf: bytearray, size: int) -> None:
        """Hand one received datagram to :attr:`on_reply` with the command it answers."""
        if isinstance(cmd, dict):
            seq = wire.NLMSG_HDR.unpack_from(buf, 0)[3] if size >= wire.NLMSG_HDR.size else 0
            cmd = cmd.get(seq, 0)
        self.on_reply(cmd, bytes(buf[:size]))

    def _dump(self, cmd: int, body: bytes):
        """Run one dump request; yield (buf, payload, end) per data message until NLMSG_DONE."""
        seq = self._next_seq()
        self._sendall(wire.message(self._family, cmd, body, seq, wire.NLM_F_REQUEST | wire.NLM_F_DUMP))
        for buf, kind, _flags, rseq, payload, end in self._replies(cmd):
            if rseq != seq:
                continue
            if kind == wire.NLMSG_DONE:
                return
            if kind == wire.NLMSG_ERROR:
                err = wire.error_code(buf, payload)
                if err:
                    raise OSError(err, f"IPVS dump (cmd {cmd}) failed")
                return
            yield buf, payload, end

    def _fill_dests(self, key: ServiceKey, entry: ServiceEntry, counters: bool) -> None:
        try:
            for buf, payload, end in self._dump(wire.CMD_GET_DEST, wire.service_attr(key, None)):
                decoded = self._dests.decode(buf, payload, end, key.af, counters)
                if decoded:
                    entry.dests[decoded[0]] = decoded[1]
        except OSError as exc:
            # Deleted by someone else between the service dump and this one: report it gone-empty.
            if exc.errno not in (errno.ESRCH, errno.ENOENT):
                raise
            log.debug("service %s vanished during dump", key)

    def _lookup_family(self) -> int | None:
        seq = self._next_seq()
        self._sendall(wire.family_request(seq))
        for buf, kind, _flags, rseq, payload, end in self._replies(wire.CTRL_CMD_GETFAMILY):
            if rseq != seq:
                continue
            if kind == wire.NLMSG_ERROR:
                err = wire.error_code(buf, payload)
                if err == errno.ENOENT:
                    return None
                if err in (errno.EPERM, errno.EACCES):
                    raise IPVSUnavailable("IPVS needs CAP_NET_ADMIN (run as root)")
                raise OSError(err, "generic netlink family lookup failed")
            return wire.family_id(buf, payload, end)
        return None


def _with_ack(msg: bytes) -> bytes:
    """The same request with NLM_F_ACK set (flags live at byte 6 of the netlink header)."""
    out = bytearray(msg)
    flags = int.from_bytes(out[6:8], sys.byteorder) | wire.NLM_F_ACK
    out[6:8] = flags.to_bytes(2, sys.byteorder)
    return bytes(out)
