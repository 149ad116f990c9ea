"""The kernel's IPVS netlink replies, byte for byte, against the golden copies the unit tests decode.

In a fresh network namespace this programs one of each thing the director
programs: an IPv4 TCP service (wlc, persistent 300 s) with a tun, a dr and a
masq real server, an IPv6 service, a firewall-mark service, the sync daemon as
master and as backup; then, the daemons stopped (the kernel refuses a sync daemon
while a real server of another family than its service exists: EINVAL, as the
sync protocol cannot carry one), an IPv6 tun real server in the IPv4 service
(mixed family, tunnelling only), and once a service that exists already (EEXIST).
It dumps the daemons while they run, then services and real servers, and
compares every reply message, with the run-dependent header fields masked (see
support.netlink_golden), with tests/golden/ipvs/NAME.bin.

``LVSMAIL_GOLDEN=write`` records them instead: into the checkout when it is
writable, else (the lab VM sees it read-only) into ``$LVSMAIL_LAB_OUT/golden/ipvs``,
to be copied to tests/golden/ipvs.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest

from lvsmail.ipvs import wire
from lvsmail.ipvs.model import (
    F_PERSISTENT,
    AddDest,
    AddService,
    DestKey,
    DestSettings,
    ServiceKey,
    ServiceSettings,
    SyncDaemon,
)
from lvsmail.ipvs.netlink import NetlinkIPVS
from lvsmail.net import netns
from support import netlink_golden as golden

pytestmark = pytest.mark.kernel

TCP = socket.IPPROTO_TCP
V4 = ServiceKey(socket.AF_INET, TCP, "192.0.2.33", 25)
V6 = ServiceKey(socket.AF_INET6, TCP, "2001:db8::33", 25)
FWMARK = ServiceKey(socket.AF_INET, fwmark=7)
#: Real server address -> (its service, settings, golden name of its dump message).
DESTS = {
    "198.51.100.20": (V4, DestSettings("tun", 1), "dest-v4-tun"),
    "198.51.100.21": (V4, DestSettings("dr", 2), "dest-v4-dr"),
    "198.51.100.22": (V4, DestSettings("nat", 3), "dest-v4-masq"),
    "2001:db8::20": (V4, DestSettings("tun", 4, af=socket.AF_INET6), "dest-v4-tun-ipv6"),
    "2001:db8::21": (V6, DestSettings("dr", 5), "dest-v6-dr"),
    "198.51.100.23": (FWMARK, DestSettings("nat", 6), "dest-fwmark-masq"),
}
SERVICES = {
    V4: (ServiceSettings("wlc", F_PERSISTENT, 300, 0xFFFFFFFF), "service-v4-tcp-wlc-persistent"),
    V6: (ServiceSettings("wlc", 0, 0, 128), "service-v6-tcp"),
    FWMARK: (ServiceSettings("rr", 0, 0, 0xFFFFFFFF), "service-fwmark"),
}
#: The sync daemons: each on one end of a veth pair (multicast needs a real link), sync id 7.
DAEMONS = {"master": SyncDaemon("master", "sync0", 7), "backup": SyncDaemon("backup", "sync1", 7)}
#: Every golden message this test produces.
NAMES = sorted({n for _, _, n in DESTS.values()} | {n for _, n in SERVICES.values()}
               | {f"daemon-{s}" for s in DAEMONS} | {"done", "error-eexist"})


@pytest.fixture
def fresh_netns(lab_ok):
    """A new network namespace with a veth pair for the sync daemons; deleted afterwards."""
    name = f"lvgold{os.getpid()}"
    setup = [["ip", "netns", "add", name],
             ["ip", "-n", name, "link", "add", "sync0", "type", "veth", "peer", "name", "sync1"],
             *(["ip", "-n", name, "link", "set", dev, "up"] for dev in ("lo", "sync0", "sync1"))]
    try:
        for cmd in setup:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)


def _add_dests(nl: NetlinkIPVS, mixed: bool) -> None:
    """Add the real servers of the same family as their service, or the mixed-family ones."""
    ops = [AddDest(svc, DestKey(addr, 0 if svc.fwmark else 25), s) for addr, (svc, s, _) in DESTS.items()
           if bool(s.af) == mixed]
    assert nl.execute_sync(ops) == [0] * len(ops), "the kernel refused part of the golden table"


def _exchange() -> dict[str, tuple[bytes, int]]:
    """Program and dump (in the calling thread's namespace); golden name -> (masked message, service family)."""
    replies: list[tuple[int, bytes]] = []
    nl = NetlinkIPVS(on_reply=lambda cmd, data: replies.append((cmd, data)))
    try:
        ops = [AddService(k, s) for k, (s, _) in SERVICES.items()]
        assert nl.execute_sync(ops) == [0] * len(ops), "the kernel refused a golden service"
        _add_dests(nl, mixed=False)
        for daemon in DAEMONS.values():
            nl.start_daemon_sync(daemon)
        replies.clear()
        daemons = nl.daemons_sync()
        dumped = list(replies)
        for state in DAEMONS:
            nl.stop_daemon_sync(state)
        _add_dests(nl, mixed=True)
        replies.clear()
        assert nl.execute_sync([AddService(V4, SERVICES[V4][0])]) == [errno.EEXIST]
        (_, refused), = replies
        replies.clear()
        table = nl.dump_sync()
        dumped += replies
    finally:
        nl.close_sync()
    assert set(table) == set(SERVICES) and {d.state for d in daemons} == set(DAEMONS)
    assert {d.addr for e in table.values() for d in e.dests} == set(DESTS)
    return _named(dumped, golden.messages(refused))


def _named(replies: list[tuple[int, bytes]], refused: list[bytes]) -> dict[str, tuple[bytes, int]]:
    """Each dump message under its golden name (the kernel lists services in hash order, so by content)."""
    out: dict[str, tuple[bytes, int]] = {}
    (error,) = [m for m in refused if wire.NLMSG_HDR.unpack_from(m, 0)[1] == wire.NLMSG_ERROR]
    out["error-eexist"] = (golden.mask(error), 0)
    for cmd, datagram in replies:
        for message in golden.messages(datagram):
            kind = wire.NLMSG_HDR.unpack_from(message, 0)[1]
            if kind == wire.NLMSG_DONE:
                out.setdefault("done", (golden.mask(message), 0))
                continue
            assert kind != wire.NLMSG_ERROR, f"an error in a dump (command {cmd}): {golden.fields(message)}"
            payload, end = 16, len(message)
            if cmd == wire.CMD_GET_SERVICE:
                key, _ = wire.decode_service(message, payload, end, counters=False)
                out[SERVICES[key][1]] = (golden.mask(message), 0)
            elif cmd == wire.CMD_GET_DEST:
                dest, _ = wire.decode_dest(message, payload, end, socket.AF_INET, counters=False)
                svc, _, name = DESTS[dest.addr]
                out[name] = (golden.mask(message), svc.af)
            elif cmd == wire.CMD_GET_DAEMON:
                out[f"daemon-{wire.decode_daemon(message, payload, end).state}"] = (golden.mask(message), 0)
    return out


def _writable(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (the lab VM sees the checkout read-only)."""
    probe = directory / ".write-probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def test_ipvs_replies_are_the_golden_bytes(fresh_netns, lab_out, capsys):
    got = netns.run_in_netns(fresh_netns, _exchange)
    assert sorted(got) == NAMES, f"messages seen: {sorted(got)}"
    if os.environ.get("LVSMAIL_GOLDEN") == "write":
        where = golden.GOLDEN_DIR if _writable(golden.GOLDEN_DIR) else lab_out / "golden" / "ipvs"
        for name, (message, af) in got.items():
            golden.record(name, message, where, service_af=af, kernel=os.uname().release)
        assert golden.names(where) == NAMES
        with capsys.disabled():
            print(f"\n  golden: {len(got)} IPVS replies of kernel {os.uname().release} written to {where}")
        return
    missing = [n for n in NAMES if not (golden.GOLDEN_DIR / f"{n}.bin").exists()]
    assert not missing, f"no golden copy of {missing}: record them with LVSMAIL_GOLDEN=write"
    problems = []
    for name, (message, _) in sorted(got.items()):
        want, _ = golden.load(name)
        diff = golden.first_difference(message, want)
        if diff:
            problems.append(f"{name}: {diff}")
    assert not problems, "the kernel's replies differ from the golden bytes:\n" + "\n".join(problems)
