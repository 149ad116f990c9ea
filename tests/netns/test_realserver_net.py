"""Real-server network setup checked from outside, in namespaces on this machine (root, no IPVS).

The lab topology is built without IPVS here; what matters is what lvsmail.net
did to each real server: the VIP where it belongs, nobody answering ARP for it,
the default route of NAT, and everything restored by undo.
"""

from __future__ import annotations

import os
import socket

import pytest

from lvsmail.net import netns
from lvsmail.net.realserver import RealServerNetSpec, local_context, plan, setup, teardown
from lvsmail.net.sysctl import ProcSysctl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def _can_make_namespaces() -> str | None:
    """Why namespaces cannot be made here, or None."""
    try:
        netns.create_netns(f"lvsprobe{os.getpid()}")
    except OSError as exc:
        return f"cannot create a network namespace: {exc}"
    netns.remove_netns(f"lvsprobe{os.getpid()}")
    return None


@pytest.fixture(scope="module")
def netns_ok():
    """Skip with the reason when namespaces are not available."""
    problem = _can_make_namespaces()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def dr(netns_ok):
    """The lab topology in DR mode (real servers: VIP on lo, ARP sysctls)."""
    from lvsmail.lab.topology import Topology

    with Topology("dr", reals=2) as topo:
        yield topo


@pytest.fixture(scope="module")
def nat(netns_ok):
    """The lab topology in NAT mode."""
    from lvsmail.lab.topology import Topology

    with Topology("nat", reals=2) as topo:
        yield topo


def _addresses(link: str) -> list[str]:
    """Addresses on a link, read in the calling namespace."""
    ctx = local_context()
    try:
        return ctx.net.addresses(link)
    finally:
        ctx.net.close()


def _default_route(family: str) -> str | None:
    """Default gateway in the calling namespace."""
    ctx = local_context()
    try:
        return ctx.net.default_route(family)
    finally:
        ctx.net.close()


def test_dr_real_server_holds_both_vips_on_lo_as_host_addresses(dr):
    rs = dr.reals[0]
    addrs = dr.call(rs, _addresses, "lo")
    assert "192.0.2.33/32" in addrs and "2001:db8:f::33/128" in addrs
    assert dr.call(rs, _addresses, "eth0")[:1] == [f"{rs.address}/24"]


def test_dr_real_server_does_not_answer_arp_for_the_vip(dr):
    from lvsmail.lab.capture import arp_probe

    rs = dr.reals[0]
    # The control: the same probe gets an answer for the real server's own address ...
    assert arp_probe(dr.gw.ns, "inside", "198.51.100.254", rs.address) == [rs.mac.lower()]
    # ... but no real server answers for the VIP, although it is a local address of each.
    # (The director, which owns the VIP, may answer: that is how it should be.)
    answers = arp_probe(dr.gw.ns, "inside", "198.51.100.254", dr.vip)
    assert not {r.mac.lower() for r in dr.reals} & set(answers), answers


def test_without_arp_ignore_the_real_server_would_answer_for_the_vip(dr):
    """Shows the probe above can fail: undo just the ARP sysctls and the VIP is answered."""
    from lvsmail.lab.capture import arp_probe

    rs = dr.reals[1]
    keys = ["net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.eth0.arp_ignore"]
    saved = dr.call(rs, lambda: {k: ProcSysctl().read(k) for k in keys})
    assert set(saved.values()) == {"1"}
    try:
        dr.call(rs, lambda: [ProcSysctl().write(k, "0") for k in keys])
        assert rs.mac.lower() in arp_probe(dr.gw.ns, "inside", "198.51.100.254", dr.vip)
    finally:
        dr.call(rs, lambda: [ProcSysctl().write(k, v) for k, v in saved.items()])


def test_dr_real_server_sysctls_are_set_in_its_namespace_only(dr):
    read = lambda: ProcSysctl().read("net.ipv4.conf.all.arp_announce")  # noqa: E731
    assert dr.call(dr.reals[0], read) == "2"
    assert dr.call(dr.director, read) == "0"
    assert dr.call(dr.client, read) == "0"


def test_dr_real_server_accepts_tcp_for_the_vip_on_its_own_segment(dr):
    """A frame for the VIP delivered to the real server is taken as local: what DR relies on."""
    rs = dr.reals[0]
    listener = dr.socket(rs, socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("0.0.0.0", 2526))
        listener.listen()

        def connect_via_real():
            # Route the VIP to the real server, as the director's DR transmit does.
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.route("replace", dst=f"{dr.vip}/32", gateway=rs.address)
            try:
                with socket.create_connection((dr.vip, 2526), timeout=5) as c:
                    return c.getpeername()[0]
            finally:
                with IPRoute() as ipr:
                    ipr.route("del", dst=f"{dr.vip}/32", gateway=rs.address)

        assert dr.call(dr.gw, connect_via_real) == dr.vip
    finally:
        listener.close()


def test_nat_real_server_routes_through_the_director_and_has_no_vip(nat):
    rs = nat.reals[0]
    assert nat.call(rs, _default_route, "inet") == "198.51.100.1"
    assert not any(a.startswith("192.0.2.33/") for a in nat.call(rs, _addresses, "lo"))


def test_setup_then_teardown_restores_a_fresh_namespace(netns_ok):
    name = f"lvsundo{os.getpid()}"
    netns.create_netns(name)
    try:
        keys = ["net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce",
                "net.ipv4.conf.lo.arp_ignore", "net.ipv4.conf.lo.arp_announce"]
        before = netns.run_in_netns(name, lambda: {k: ProcSysctl().read(k) for k in keys})
        spec = RealServerNetSpec("dr", ("192.0.2.33", "2001:db8:f::33"), interface="lo")
        undo_steps = netns.run_in_netns(name, setup, spec)
        assert len(undo_steps) == len(plan(spec))
        assert "192.0.2.33/32" in netns.run_in_netns(name, _addresses, "lo")
        assert netns.run_in_netns(name, teardown, undo_steps) == []
        assert netns.run_in_netns(name, lambda: {k: ProcSysctl().read(k) for k in keys}) == before
        assert not any(a.startswith(("192.0.2.33", "2001:db8:f::33"))
                       for a in netns.run_in_netns(name, _addresses, "lo"))
    finally:
        netns.remove_netns(name)


def test_tun_setup_fails_cleanly_or_succeeds_depending_on_ipip(netns_ok):
    """Without an ipip module the plan stops at modprobe and leaves nothing behind."""
    from lvsmail.net.realserver import ApplyError

    name = f"lvstun{os.getpid()}"
    netns.create_netns(name)
    try:
        spec = RealServerNetSpec("tun", ("192.0.2.33",), interface="lo")
        before = netns.run_in_netns(name, ProcSysctl().read, "net.ipv4.conf.all.arp_ignore")
        try:
            undo_steps = netns.run_in_netns(name, setup, spec)
        except ApplyError as exc:
            assert "modprobe ipip" in str(exc)
            assert netns.run_in_netns(name, ProcSysctl().read, "net.ipv4.conf.all.arp_ignore") == before
        else:
            assert "192.0.2.33/32" in netns.run_in_netns(name, _addresses, "tunl0")
            assert netns.run_in_netns(name, teardown, undo_steps) == []
    finally:
        netns.remove_netns(name)
