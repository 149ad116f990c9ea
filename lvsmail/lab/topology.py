"""A mail cluster in network namespaces: client, router, director, N real servers.

Layout (every address is from the documentation ranges, RFC 5737 / RFC 3849)::

    client 203.0.113.10 ──(cl0)── gw ──[bridge front 192.0.2.0/24]── director eth0 .2 + VIP .33
                                  gw .1                                     │
                                  gw ──[bridge inside 198.51.100.0/24]── director eth1 .1
                                  gw .254                         └─ rs1 .20, rs2 .32, rs3 .35, rs4 .36 …

``gw`` is the site router and holds both bridges. The director has a leg on each
network, as LVS-NAT needs (its outside interface carries the VIP, its inside one is
the real servers' gateway in NAT mode) and as DR needs (director and real servers
share the inside segment, because DR only rewrites the destination MAC). In TUN
and DR mode the real servers answer the client directly through ``gw``
(198.51.100.254), so only inbound traffic crosses the director; ``gw`` therefore
has reverse-path filtering off, as any router in front of an LVS-DR/TUN cluster
must, since replies with the VIP as source come from the real-server network. In
NAT mode the real servers' default route points at the director instead, which
forwards. IPv6 runs in parallel (2001:db8:c::/64, 2001:db8:f::/64 with the VIP
2001:db8:f::33, 2001:db8:5::/64) so DR can be exercised over IPv6 too.

With ``directors=2`` a second director (``director2``: 192.0.2.3 outside,
198.51.100.2 inside) sits on both segments beside the first, as the standby of a
failover pair; ``vip_on`` says which director holds the VIP at first (1, 2 or
None for neither, when VRRP is to place it). A pair is built for TUN and DR only:
NAT would also need a floating gateway address for the real servers.

Real servers get their VIP, ARP and reverse-path settings from :mod:`lvsmail.net`
(the same code ``lvsmail realserver join`` uses). Namespace names carry a unique
prefix so parallel runs never clash; interface names live inside the namespaces.
Everything is torn down on exit, also after a failure.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from lvsmail.net import netns
from lvsmail.net.realserver import RealServerNetSpec, Step
from lvsmail.net.sysctl import ProcSysctl

log = logging.getLogger("lvsmail.lab")

MODES = ("tun", "dr", "nat")

VIP = "192.0.2.33"
VIP6 = "2001:db8:f::33"
CLIENT = "203.0.113.10"
CLIENT6 = "2001:db8:c::10"
#: Extra client addresses, for tests that need several distinct clients.
CLIENT_EXTRA = ("203.0.113.11", "203.0.113.12", "203.0.113.13")
GW_CLIENT, GW_CLIENT6 = "203.0.113.1", "2001:db8:c::1"
GW_FRONT, GW_FRONT6 = "192.0.2.1", "2001:db8:f::1"
GW_INSIDE, GW_INSIDE6 = "198.51.100.254", "2001:db8:5::fe"
DIRECTOR_FRONT, DIRECTOR_FRONT6 = "192.0.2.2", "2001:db8:f::2"
DIRECTOR_INSIDE, DIRECTOR_INSIDE6 = "198.51.100.1", "2001:db8:5::1"
#: The second director of a failover pair.
DIRECTOR2_FRONT, DIRECTOR2_FRONT6 = "192.0.2.3", "2001:db8:f::3"
DIRECTOR2_INSIDE, DIRECTOR2_INSIDE6 = "198.51.100.2", "2001:db8:5::2"
#: NAT with a director pair: the real servers' default gateway, an address on the inside link that
#: moves with the VIP (VRRP holds both), as keepalived's LVS-NAT examples do.
NAT_GATEWAY = "198.51.100.253"
#: The lab's IPVS sync id (the cluster file's ``sync: syncid``), shared by every director stack.
SYNC_ID = 7
#: Host numbers of the first real servers, as in the deployment the project comes from.
REAL_HOSTS = (20, 32, 35, 36)


def real_host(index: int) -> int:
    """Host number of real server ``index`` (0-based): 20, 32, 35, 36, then 40, 41, ..."""
    return REAL_HOSTS[index] if index < len(REAL_HOSTS) else 40 + index - len(REAL_HOSTS)


@dataclass
class Node:
    """One namespace of the topology."""

    role: str  # client | gw | director | rs1 ...
    ns: str  # namespace name
    addresses: list[str] = field(default_factory=list)  # address/prefix on the main interface(s)


@dataclass
class RealServer(Node):
    """A real server: its address on the inside network, MAC, and its lvsmail.net undo steps."""

    address: str = ""
    address6: str = ""
    mac: str = ""
    undo: list[Step] = field(default_factory=list)


def _sysctl(values: dict[str, str]) -> None:
    """Write sysctls in the current namespace."""
    s = ProcSysctl()
    for key, value in values.items():
        s.write(key, value)


def _base_sysctls(forward: bool) -> dict[str, str]:
    """Sysctls every lab namespace gets before its interfaces arrive."""
    values = {
        # DAD would hold IPv6 addresses tentative for a second or more: needless in a lab.
        "net.ipv6.conf.all.accept_dad": "0",
        "net.ipv6.conf.default.accept_dad": "0",
        "net.ipv6.conf.default.dad_transmits": "0",
    }
    if forward:
        values.update({
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            # New namespaces inherit rp_filter from the initial one; a router of an
            # LVS-DR/TUN site must accept the VIP as source from the real-server side.
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        })
    return values


class Topology(AbstractContextManager):
    """The namespaces, links and addresses of one lab cluster; a context manager."""

    def __init__(self, mode: str = "tun", reals: int = 4, prefix: str | None = None,
                 directors: int = 1, vip_on: int | None = 1, bare: tuple[str, ...] = ()) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if directors not in (1, 2):
            raise ValueError("directors must be 1 or 2")
        if vip_on is not None and not 1 <= vip_on <= directors:
            raise ValueError(f"vip_on must be None or a director number from 1 to {directors}")
        if not 1 <= reals <= 200:
            raise ValueError("reals must be between 1 and 200")
        self.mode = mode
        self.prefix = prefix or f"lvs{os.getpid()}{secrets.token_hex(2)}"
        self.vip, self.vip6 = VIP, VIP6
        self.client = Node("client", f"{self.prefix}-cl")
        self.gw = Node("gw", f"{self.prefix}-gw")
        self.director = Node("director", f"{self.prefix}-dir")
        self.directors = [self.director] + [Node("director2", f"{self.prefix}-dir2")] * (directors == 2)
        self.vip_on = vip_on
        #: Real servers (by role) left without VIP and ARP settings, for `lvsmail realserver join` to prepare.
        self.bare = tuple(bare)
        self.reals = [
            RealServer(f"rs{i + 1}", f"{self.prefix}-rs{i + 1}",
                       address=f"198.51.100.{real_host(i)}", address6=f"2001:db8:5::{real_host(i)}")
            for i in range(reals)
        ]
        self._created: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._built = False
        if directors == 2 and mode == "nat" and any(rs.role not in self.bare for rs in self.reals):
            raise ValueError("a NAT director pair needs bare real servers: their default route is the floating "
                             f"gateway {NAT_GATEWAY}, set by `lvsmail realserver join` (realserver.nat_gateway)")

    # -- life cycle ----------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        """Every namespace, router first."""
        return [self.gw, self.client, *self.directors, *self.reals]

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def build(self) -> None:
        """Create the namespaces, then wire them (see :meth:`create_namespaces` and :meth:`wire`)."""
        self.create_namespaces()
        self.wire()

    def create_namespaces(self) -> None:
        """Create the empty namespaces with their base sysctls (fast: no netlink library needed).

        Split from :meth:`wire` so slow starters, such as the director under emulation,
        can be launched in their namespace while the links are still being made.
        """
        for node in self.nodes:
            if node.ns in self._created:
                continue
            netns.create_netns(node.ns)
            self._created.append(node.ns)
            # lo up before anything starts in the namespace: without it there is no local routing
            # table, and IPVS refuses every real server with EINVAL (a director started early).
            subprocess.run(["ip", "-n", node.ns, "link", "set", "lo", "up"], check=True, capture_output=True,
                           timeout=60)
            self.call(node, _sysctl, _base_sysctls(forward=node is self.gw or
                                                   (node in self.directors and self.mode == "nat")))

    def wire(self) -> None:
        """Links, addresses and routes; then lvsmail.net prepares each real server."""
        self.create_namespaces()
        self.call(self.gw, self._build_gw)
        self.call(self.client, self._build_host, {"eth0": [f"{CLIENT}/24", *(f"{a}/24" for a in CLIENT_EXTRA),
                                                            f"{CLIENT6}/64"]}, GW_CLIENT, GW_CLIENT6)
        # The VIP is a secondary address on the outside interface, as heartbeat's
        # IPaddr2 or keepalived would add it on the active director.
        fronts = ((DIRECTOR_FRONT, DIRECTOR_FRONT6, DIRECTOR_INSIDE, DIRECTOR_INSIDE6),
                  (DIRECTOR2_FRONT, DIRECTOR2_FRONT6, DIRECTOR2_INSIDE, DIRECTOR2_INSIDE6))
        for number, (node, (front, front6, inside, inside6)) in enumerate(zip(self.directors, fronts), 1):
            vips = [f"{VIP}/24", f"{VIP6}/64"] if number == self.vip_on else []
            self.call(node, self._build_host, {
                "eth0": [f"{front}/24", f"{front6}/64", *vips],
                "eth1": [f"{inside}/24", f"{inside6}/64"],
            }, GW_FRONT, GW_FRONT6)
            node.addresses = [front, inside]
        for rs in self.reals:
            rs.mac = self.call(rs, self._build_host, {"eth0": [f"{rs.address}/24", f"{rs.address6}/64"]},
                               GW_INSIDE, GW_INSIDE6)
            rs.addresses = [rs.address, rs.address6]
            if rs.role not in self.bare:
                rs.undo = self.call(rs, _setup_realserver, self.realserver_spec())
        self._built = True

    def realserver_spec(self) -> RealServerNetSpec:
        """What :mod:`lvsmail.net` must set up on each real server for this mode."""
        if self.mode == "nat":
            return RealServerNetSpec("nat", director=DIRECTOR_INSIDE, interface="eth0")
        if self.mode == "dr":
            return RealServerNetSpec("dr", vips=(VIP, VIP6), interface="eth0")
        return RealServerNetSpec("tun", vips=(VIP,), interface="eth0")

    def _build_gw(self) -> None:
        """In gw: the bridges, the veth pairs to every other namespace, the router's addresses."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            bridges = {}
            for br in ("front", "inside"):
                ipr.link("add", ifname=br, kind="bridge", br_stp_state=0, br_forward_delay=0)
                bridges[br] = ipr.link_lookup(ifname=br)[0]
            pairs = [("cl0", self.client.ns, "eth0", None), ("dir0", self.director.ns, "eth0", "front"),
                     ("dir1", self.director.ns, "eth1", "inside")]
            if len(self.directors) == 2:
                pairs += [("dirb0", self.directors[1].ns, "eth0", "front"),
                          ("dirb1", self.directors[1].ns, "eth1", "inside")]
            pairs += [(rs.role, rs.ns, "eth0", "inside") for rs in self.reals]
            for local, peer_ns, peer_name, bridge in pairs:
                ipr.link("add", ifname=local, kind="veth", peer={"ifname": peer_name, "net_ns_fd": peer_ns})
                idx = ipr.link_lookup(ifname=local)[0]
                if bridge:
                    ipr.link("set", index=idx, master=bridges[bridge])
                ipr.link("set", index=idx, state="up")
            addrs = {"cl0": [f"{GW_CLIENT}/24", f"{GW_CLIENT6}/64"],
                     "front": [f"{GW_FRONT}/24", f"{GW_FRONT6}/64"],
                     "inside": [f"{GW_INSIDE}/24", f"{GW_INSIDE6}/64"]}
            for link, cidrs in addrs.items():
                idx = ipr.link_lookup(ifname=link)[0]
                ipr.link("set", index=idx, state="up")
                for cidr in cidrs:
                    _addr_add(ipr, idx, cidr)
        _sysctl({"net.ipv4.conf.cl0.rp_filter": "0", "net.ipv4.conf.front.rp_filter": "0",
                 "net.ipv4.conf.inside.rp_filter": "0"})
        self.gw.addresses = [GW_CLIENT, GW_FRONT, GW_INSIDE]

    @staticmethod
    def _build_host(links: dict[str, list[str]], gw4: str, gw6: str) -> str:
        """In a host namespace: addresses on its links, links up, default routes; returns eth0's MAC."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for link, cidrs in links.items():
                idx = ipr.link_lookup(ifname=link)[0]
                for cidr in cidrs:
                    _addr_add(ipr, idx, cidr)
                ipr.link("set", index=idx, state="up")
            ipr.route("replace", dst="0.0.0.0/0", gateway=gw4)
            ipr.route("replace", dst="::/0", gateway=gw6, family=10)
            return ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")

    def close(self) -> None:
        """Stop processes started here, then delete every namespace (idempotent)."""
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs.clear()
        for name in reversed(self._created):
            try:
                netns.remove_netns(name)
            except OSError as exc:  # teardown goes on; a leftover namespace is named, not hidden
                log.warning("lab: could not remove namespace %s: %s", name, exc)
        self._created.clear()

    # -- running things in the namespaces ------------------------------------

    def node(self, name: str) -> Node:
        """A node by role (``client``, ``gw``, ``director``, ``rs1`` ...) or namespace name."""
        for n in self.nodes:
            if name in (n.role, n.ns):
                return n
        raise KeyError(name)

    def _ns(self, node: Node | str) -> str:
        """Namespace name of a node or role."""
        return node.ns if isinstance(node, Node) else self.node(node).ns

    def call(self, node: Node | str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a Python callable inside the node's namespace (in a thread) and return its result."""
        return netns.run_in_netns(self._ns(node), fn, *args, **kwargs)

    def socket(self, node: Node | str, family: int, type: int, proto: int = 0):
        """A socket in the node's namespace."""
        return netns.socket_in_netns(self._ns(node), family, type, proto)

    def argv(self, node: Node | str, cmd: Sequence[str]) -> list[str]:
        """``ip netns exec NS CMD``: a command line that runs in the node's namespace."""
        return ["ip", "netns", "exec", self._ns(node), *cmd]

    def run(self, node: Node | str, cmd: Sequence[str], check: bool = True, timeout: float = 120,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a command in the node's namespace and wait for it (output captured as text)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(node, cmd), check=check, timeout=timeout, stdin=subprocess.DEVNULL,
                              **kwargs)

    def popen(self, node: Node | str, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start a command in the node's namespace; it is stopped when the topology closes."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(node, cmd), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 15) -> int:
        """Stop a process started with :meth:`popen` (SIGTERM, then SIGKILL) and return its status."""
        rc = _stop(proc, timeout)
        if proc in self._procs:
            self._procs.remove(proc)
        return rc

    def describe(self) -> str:
        """A short human description of the topology."""
        reals = ", ".join(f"{rs.role} {rs.address}" for rs in self.reals)
        pair = f", standby director {DIRECTOR2_FRONT}/{DIRECTOR2_INSIDE}" if len(self.directors) == 2 else ""
        vip = "nowhere yet" if self.vip_on is None else f"on director {self.vip_on}"
        return (f"mode {self.mode}: client {CLIENT} -> gw -> director {DIRECTOR_FRONT} (VIP {VIP}, {VIP6} {vip}), "
                f"inside {DIRECTOR_INSIDE}{pair}; real servers {reals}")


def _addr_add(ipr, index: int, cidr: str) -> None:
    """Add one address with pyroute2 (IPv6 without DAD)."""
    addr, plen = cidr.split("/")
    if ":" in addr:
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen), family=10, flags=0x02)
    else:
        ipr.addr("add", index=index, address=addr, prefixlen=int(plen))


def _setup_realserver(spec: RealServerNetSpec) -> list[Step]:
    """lvsmail.net's real-server setup, run inside the real server's namespace."""
    from lvsmail.net.realserver import setup

    return setup(spec)


def _stop(proc: subprocess.Popen, timeout: float = 15) -> int:
    """SIGTERM the process group we started, wait, then SIGKILL it if needed."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(timeout=timeout)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
