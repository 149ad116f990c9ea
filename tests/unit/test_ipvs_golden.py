"""Every golden IPVS reply (the lab kernel's own bytes) decodes to the form recorded beside it.

The kernel test test_golden_netlink records them and checks the running kernel
still sends the same bytes; this reads them with lvsmail's decoders, so a codec
change that misreads what the kernel really sends fails here, without a lab.
NetlinkIPVS itself is run against a socket that replays them, which also shows
its ``on_reply`` hook what the golden test relies on.
"""

from __future__ import annotations

import errno
import socket
import struct
import types

import pytest

from lvsmail.ipvs import netlink, wire
from lvsmail.ipvs.model import F_PERSISTENT, AddService, DestSettings, ServiceKey, ServiceSettings
from support import netlink_golden as golden

NAMES = golden.names()
V4 = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)


def test_the_golden_replies_are_there():
    # One of each: services (IPv4, IPv6, fwmark), real servers (tun, dr, masq, mixed family, IPv6, fwmark),
    # both sync daemons, the end of a dump and a refusal.
    assert len(NAMES) >= 13, NAMES
    assert {"done", "error-eexist", "daemon-master", "daemon-backup", "dest-v4-tun-ipv6"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_golden_reply_decodes_to_its_recorded_form(name):
    message, doc = golden.load(name)
    assert golden.mask(message) == message, "recorded unmasked: seq, pid or family id left in"
    assert [end for *_, end in wire.iter_messages(message, len(message))] == [len(message)], "not one message"
    assert golden.fields(message) == doc["fields"]
    assert golden.decoded(message, doc["service_af"]) == doc["decoded"]


def test_a_difference_from_the_golden_bytes_names_the_field():
    message, _ = golden.load("dest-v4-dr")
    changed = bytearray(message)
    off, n = wire.attrs(changed, 20, len(changed))[wire.ATTR_DEST]
    at, _ = wire.attrs(changed, off, off + n)[wire.DEST_WEIGHT]
    struct.pack_into("=I", changed, at, 9)
    assert golden.first_difference(message, message) is None
    assert golden.first_difference(bytes(changed), message) == "DEST/WEIGHT: got 09000000, golden 02000000"
    other = golden.load("dest-v4-tun")[0]  # same layout, other values: the first differing field is named
    assert golden.first_difference(other, message).startswith("DEST/ADDR: got c6336414")


# -- NetlinkIPVS over the golden replies, through its on_reply hook ------------------------------------

FAMILY = 0x2A  # the family id the replayed kernel hands out


class ReplayedKernel:
    """A netlink socket that answers each IPVS request with golden messages (seq and family id filled in)."""

    SCRIPT = {
        wire.CMD_GET_SERVICE: ["service-v4-tcp-wlc-persistent", "done"],
        wire.CMD_GET_DEST: ["dest-v4-tun", "dest-v4-dr", "dest-v4-masq", "dest-v4-tun-ipv6", "done"],
        wire.CMD_GET_DAEMON: ["daemon-master", "daemon-backup", "done"],
        wire.CMD_NEW_SERVICE: ["error-eexist"],
    }

    def __init__(self, *args) -> None:
        self.pending: list[bytes] = []
        self.sent: list[bytes] = []

    def setsockopt(self, *args) -> None:
        """Accepted and ignored."""

    def settimeout(self, timeout) -> None:
        """Accepted and ignored."""

    def bind(self, addr) -> None:
        """Accepted and ignored."""

    def close(self) -> None:
        """Accepted and ignored."""

    @staticmethod
    def _filled(message: bytes, seq: int) -> bytes:
        length, kind, flags, _, pid = wire.NLMSG_HDR.unpack_from(message, 0)
        return wire.NLMSG_HDR.pack(length, kind or FAMILY, flags, seq, pid) + message[16:]

    def sendto(self, data: bytes, addr) -> int:
        for kind, _, seq, payload, _ in wire.iter_messages(data, len(data)):
            if kind == wire.GENL_ID_CTRL:
                body = wire.attr(wire.CTRL_ATTR_FAMILY_ID, struct.pack("=H", FAMILY))
                reply = wire.message(wire.GENL_ID_CTRL, wire.CTRL_CMD_GETFAMILY, body, seq)
            else:
                names = self.SCRIPT[data[payload]]
                reply = b"".join(self._filled(golden.load(n)[0], seq) for n in names)
            self.sent.append(reply)
            self.pending.append(reply)
        return len(data)

    def recv_into(self, buf: bytearray) -> int:
        data = self.pending.pop(0)
        buf[:len(data)] = data
        return len(data)


@pytest.fixture
def replayed(monkeypatch):
    """NetlinkIPVS's socket module with a ReplayedKernel as its socket; the kernel object is returned."""
    kernel = ReplayedKernel()
    names = {k: getattr(socket, k) for k in dir(socket) if k.isupper()}
    monkeypatch.setattr(netlink, "socket", types.SimpleNamespace(**names, socket=lambda *a: kernel))
    return kernel


def test_on_reply_sees_every_datagram_with_the_command_it_answers(replayed):
    seen: list[tuple[int, bytes]] = []
    nl = netlink.NetlinkIPVS(on_reply=lambda cmd, data: seen.append((cmd, data)))
    table = nl.dump_sync()
    daemons = nl.daemons_sync()
    assert nl.execute_sync([AddService(V4, ServiceSettings("wlc", F_PERSISTENT, 300))]) == [errno.EEXIST]
    assert [cmd for cmd, _ in seen] == [wire.CTRL_CMD_GETFAMILY, wire.CMD_GET_SERVICE, wire.CMD_GET_DEST,
                                        wire.CMD_GET_DAEMON, wire.CMD_NEW_SERVICE]
    assert [data for _, data in seen] == replayed.sent
    # What the director makes of the kernel's bytes.
    assert list(table) == [V4] and table[V4].settings == ServiceSettings("wlc", F_PERSISTENT, 300, 0xFFFFFFFF)
    assert {k.addr: e.settings for k, e in table[V4].dests.items()} == {
        "198.51.100.20": DestSettings("tun", 1), "198.51.100.21": DestSettings("dr", 2),
        "198.51.100.22": DestSettings("nat", 3), "2001:db8::20": DestSettings("tun", 4, af=socket.AF_INET6)}
    assert [(d.state, d.interface, d.syncid) for d in daemons] == [("master", "sync0", 7), ("backup", "sync1", 7)]
