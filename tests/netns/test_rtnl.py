"""The failover's own rtnetlink reader against pyroute2, in a namespace on this machine (root).

``RtnlAddresses`` replaced pyroute2 on the director's failover path (a restarted
director must start VRRP at once; pyroute2's import took minutes in the loaded
lab). Both readers must see the same addresses and link states, IPv4 and IPv6,
after adds, removals and a link going down.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from lvsmail.net import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def ns():
    name = f"lvsrtnl{os.getpid()}"
    try:
        netns.create_netns(name)
    except OSError as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        for cmd in (["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
                    ["link", "set", "veth0", "up"], ["link", "set", "veth1", "up"], ["link", "set", "lo", "up"],
                    ["addr", "add", "192.0.2.2/24", "dev", "veth0"],
                    ["-6", "addr", "add", "2001:db8::2/64", "dev", "veth0", "nodad"]):
            subprocess.run(["ip", "netns", "exec", name, "ip", *cmd], check=True, capture_output=True)
        yield name
    finally:
        netns.remove_netns(name)


def _both(ns: str):
    from lvsmail.net.iproute import IPRouteBackend, RtnlAddresses

    def read():
        ours, ref = RtnlAddresses(), IPRouteBackend()
        try:
            return ((sorted(ours.addresses("veth0")), ours.link_states()),
                    (sorted(ref.addresses("veth0")), ref.link_states()))
        finally:
            ours.close()
            ref.close()

    return netns.run_in_netns(ns, read)


def test_addresses_and_link_states_match_pyroute2_through_changes(ns):
    from lvsmail.net.iproute import RtnlAddresses

    ours, ref = _both(ns)
    assert ours == ref
    assert "192.0.2.2/24" in ours[0] and "2001:db8::2/64" in ours[0], ours
    assert ours[1]["veth0"] is True and ours[1]["lo"] is True, ours[1]

    def change():
        r = RtnlAddresses()
        try:
            r.add_address("veth0", "192.0.2.33/24")
            r.add_address("veth0", "192.0.2.34/24")
            r.add_address("veth0", "2001:db8::33/64")
            r.del_address("veth0", "192.0.2.34/24")
        finally:
            r.close()

    netns.run_in_netns(ns, change)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "veth1", "down"], check=True)
    # veth0's carrier follows its peer through the kernel's link watch, which runs a moment later (up to
    # a second on a loaded machine): compare once the reference has seen it.
    deadline = time.monotonic() + 5
    while _both(ns)[1][1]["veth0"] and time.monotonic() < deadline:
        time.sleep(0.05)
    ours, ref = _both(ns)
    assert ours == ref
    assert "192.0.2.33/24" in ours[0] and "2001:db8::33/64" in ours[0] and "192.0.2.34/24" not in ours[0], ours
    # veth0 is administratively up but lost its carrier with its peer down: not operational.
    assert ours[1]["veth0"] is False and ours[1]["veth1"] is False, ours[1]


def test_a_missing_interface_is_enodev_naming_it(ns):
    import errno

    from lvsmail.net.backend import NetError
    from lvsmail.net.iproute import RtnlAddresses

    def read():
        r = RtnlAddresses()
        try:
            r.addresses("nosuch0")
        finally:
            r.close()

    with pytest.raises(NetError) as info:
        netns.run_in_netns(ns, read)
    assert info.value.errno == errno.ENODEV and "nosuch0" in str(info.value)
