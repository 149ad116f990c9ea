"""Planning and applying a real server's network setup, against fakes (no root)."""

import pytest

from lvsmail.net.backend import FakeLink, FakeModules, FakeNetBackend, NetError
from lvsmail.net.realserver import (
    AddAddress,
    ApplyError,
    DelAddress,
    LoadModule,
    NetContext,
    RealServerNetSpec,
    SetDefaultRoute,
    SetLinkState,
    SetSysctl,
    apply,
    describe,
    plan,
    step_from_dict,
    undo,
)
from lvsmail.net.sysctl import FakeSysctl, ProcSysctl, SysctlError, conf_key, sysctl_path

VIP, VIP6 = "192.0.2.33", "2001:db8:f::33"


def fake_ctx(with_ipip_loaded: bool = False) -> NetContext:
    """A real server as a fresh namespace has it: lo and eth0 up, kernel-default sysctls."""
    sysctl = FakeSysctl({
        conf_key("inet", iface, key): "0"
        for iface in ("all", "default", "lo", "eth0") for key in ("rp_filter", "arp_ignore", "arp_announce")
    })
    sysctl.values[conf_key("inet", "all", "rp_filter")] = "2"  # as many distributions set it
    net = FakeNetBackend(default_routes={"inet": "198.51.100.254"})
    modules = FakeModules(net, sysctl)
    if with_ipip_loaded:
        modules.load("ipip")
        modules.loads.clear()
    return NetContext(net, sysctl, modules)


# -- planning (pure) -------------------------------------------------------------

def test_tun_plan_loads_ipip_then_tunl0_up_then_rp_filter_then_arp_then_vip_last():
    steps = plan(RealServerNetSpec("tun", (VIP,), interface="eth0"))
    assert steps == [
        LoadModule("ipip"),
        SetLinkState("tunl0", True),
        SetSysctl("net.ipv4.conf.all.rp_filter", "0"),
        SetSysctl("net.ipv4.conf.tunl0.rp_filter", "0"),
        SetSysctl("net.ipv4.conf.all.arp_ignore", "1"),
        SetSysctl("net.ipv4.conf.all.arp_announce", "2"),
        SetSysctl("net.ipv4.conf.eth0.arp_ignore", "1"),
        SetSysctl("net.ipv4.conf.eth0.arp_announce", "2"),
        AddAddress("tunl0", "192.0.2.33/32"),
    ]


def test_dr_plan_puts_vip_on_lo_as_host_address_after_the_arp_sysctls():
    steps = plan(RealServerNetSpec("dr", (VIP,), interface="ens3"))
    assert steps[-1] == AddAddress("lo", "192.0.2.33/32")
    assert SetSysctl("net.ipv4.conf.ens3.arp_ignore", "1") in steps
    assert SetSysctl("net.ipv4.conf.ens3.arp_announce", "2") in steps
    assert not any(isinstance(s, LoadModule) for s in steps)
    assert not any("rp_filter" in getattr(s, "key", "") for s in steps)


def test_dr_over_ipv6_only_adds_the_vip_with_prefix_128_and_no_arp_sysctls():
    assert plan(RealServerNetSpec("dr", (VIP6,))) == [AddAddress("lo", "2001:db8:f::33/128")]


def test_dual_stack_dr_plan_has_both_vips():
    steps = plan(RealServerNetSpec("dr", (VIP, VIP6)))
    assert steps[-2:] == [AddAddress("lo", "192.0.2.33/32"), AddAddress("lo", "2001:db8:f::33/128")]


def test_tun_over_ipv6_uses_ip6_tunnel_and_ip6tnl0():
    steps = plan(RealServerNetSpec("tun", (VIP6,)))
    assert steps == [LoadModule("ip6_tunnel"), SetLinkState("ip6tnl0", True), AddAddress("ip6tnl0", f"{VIP6}/128")]


def test_nat_plan_is_only_the_default_route_via_the_director():
    assert plan(RealServerNetSpec("nat", director="198.51.100.1")) == [SetDefaultRoute("inet", "198.51.100.1")]


def test_nat_over_ipv6_routes_via_the_ipv6_director():
    assert plan(RealServerNetSpec("nat", director="2001:db8:5::1")) == [SetDefaultRoute("inet6", "2001:db8:5::1")]


def test_interface_names_with_dots_are_escaped_in_sysctl_keys():
    steps = plan(RealServerNetSpec("dr", (VIP,), interface="eth0.100"))
    assert SetSysctl("net.ipv4.conf.eth0/100.arp_ignore", "1") in steps
    assert sysctl_path("net.ipv4.conf.eth0/100.arp_ignore").parts[-2] == "eth0.100"


@pytest.mark.parametrize("spec, message", [
    (RealServerNetSpec("nat"), "director"),
    (RealServerNetSpec("dr"), "VIP"),
    (RealServerNetSpec("tun", ()), "VIP"),
    (RealServerNetSpec("masq", (VIP,)), "forwarding"),
    (RealServerNetSpec("dr", (VIP, VIP)), "duplicate"),
])
def test_impossible_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        plan(spec)


def test_bad_vip_is_refused():
    with pytest.raises(ValueError):
        plan(RealServerNetSpec("dr", ("not-an-address",)))


def test_describe_speaks_the_administrators_commands():
    lines = describe(plan(RealServerNetSpec("tun", (VIP,))))
    assert lines[0] == "modprobe ipip"
    assert "ip link set tunl0 up" in lines
    assert lines[-1] == "ip addr add 192.0.2.33/32 dev tunl0"
    assert describe([SetDefaultRoute("inet6", None)]) == ["ip -6 route del default"]


# -- applying and undoing (fakes) ------------------------------------------------

def test_tun_apply_on_a_fresh_server_creates_tunl0_and_holds_the_vip_there():
    ctx = fake_ctx()
    apply(plan(RealServerNetSpec("tun", (VIP,))), ctx)
    assert ctx.modules.loads == ["ipip"]
    assert ctx.net.links["tunl0"].up
    assert "192.0.2.33/32" in ctx.net.links["tunl0"].addresses
    assert ctx.sysctl.read("net.ipv4.conf.all.rp_filter") == "0"
    assert ctx.sysctl.read("net.ipv4.conf.tunl0.rp_filter") == "0"
    assert ctx.sysctl.read("net.ipv4.conf.eth0.arp_ignore") == "1"


def test_the_arp_sysctls_are_written_before_the_vip_appears():
    ctx = fake_ctx()
    apply(plan(RealServerNetSpec("dr", (VIP,))), ctx)
    addr_call = ctx.net.calls.index(("addr add", "lo", "192.0.2.33/32"))
    assert addr_call == len(ctx.net.calls) - 1
    assert ("net.ipv4.conf.all.arp_ignore", "1") in ctx.sysctl.writes


def test_undo_restores_previous_sysctls_addresses_and_link_state():
    ctx = fake_ctx()
    before_sysctl = dict(ctx.sysctl.values)
    undo_steps = apply(plan(RealServerNetSpec("tun", (VIP,))), ctx)
    undo(undo_steps, ctx)
    # tunl0 stays (modules are never unloaded) but is down and empty again.
    assert ctx.net.links["tunl0"] == FakeLink(False, [])
    for key, value in before_sysctl.items():
        assert ctx.sysctl.read(key) == value, key
    assert ctx.sysctl.read("net.ipv4.conf.all.rp_filter") == "2"


def test_applying_twice_changes_nothing_the_second_time():
    ctx = fake_ctx()
    apply(plan(RealServerNetSpec("dr", (VIP, VIP6))), ctx)
    calls, writes = len(ctx.net.calls), len(ctx.sysctl.writes)
    assert apply(plan(RealServerNetSpec("dr", (VIP, VIP6))), ctx) == []
    assert (len(ctx.net.calls), len(ctx.sysctl.writes)) == (calls, writes)


def test_undo_of_a_second_apply_keeps_what_the_first_set_up():
    ctx = fake_ctx()
    apply(plan(RealServerNetSpec("dr", (VIP,))), ctx)
    undo(apply(plan(RealServerNetSpec("dr", (VIP,))), ctx), ctx)
    assert "192.0.2.33/32" in ctx.net.links["lo"].addresses


def test_nat_apply_replaces_the_default_route_and_undo_puts_the_old_one_back():
    ctx = fake_ctx()
    undo_steps = apply(plan(RealServerNetSpec("nat", director="198.51.100.1")), ctx)
    assert ctx.net.default_route("inet") == "198.51.100.1"
    assert undo_steps == [SetDefaultRoute("inet", "198.51.100.254")]
    undo(undo_steps, ctx)
    assert ctx.net.default_route("inet") == "198.51.100.254"


def test_nat_undo_removes_a_default_route_that_was_not_there_before():
    ctx = fake_ctx()
    ctx.net.routes.clear()
    undo(apply(plan(RealServerNetSpec("nat", director="198.51.100.1")), ctx), ctx)
    assert ctx.net.default_route("inet") is None


def test_nat_gateway_off_every_connected_network_fails_like_the_kernel():
    ctx = fake_ctx()
    with pytest.raises(ApplyError) as info:
        apply(plan(RealServerNetSpec("nat", director="203.0.113.1")), ctx)
    assert "203.0.113.1" in str(info.value)
    assert ctx.net.default_route("inet") == "198.51.100.254"


def test_a_failing_step_rolls_back_the_steps_before_it():
    ctx = fake_ctx()
    del ctx.sysctl.values["net.ipv4.conf.eth0.arp_announce"]  # e.g. the interface vanished
    with pytest.raises(ApplyError) as info:
        apply(plan(RealServerNetSpec("dr", (VIP,))), ctx)
    assert isinstance(info.value.cause, SysctlError)
    assert info.value.rollback_errors == []
    assert ctx.sysctl.read("net.ipv4.conf.all.arp_ignore") == "0"
    assert ctx.sysctl.read("net.ipv4.conf.eth0.arp_ignore") == "0"
    assert "192.0.2.33/32" not in ctx.net.links["lo"].addresses


def test_tun_without_the_ipip_module_fails_and_rolls_back():
    ctx = fake_ctx()
    ctx.modules.available.clear()
    with pytest.raises(ApplyError, match="modprobe ipip"):
        apply(plan(RealServerNetSpec("tun", (VIP,))), ctx)


def test_tun_skips_modprobe_when_ipip_is_loaded():
    ctx = fake_ctx(with_ipip_loaded=True)
    apply(plan(RealServerNetSpec("tun", (VIP,))), ctx)
    assert ctx.modules.loads == []


def test_undo_carries_on_past_a_failure_and_reports_it():
    ctx = fake_ctx()
    undo_steps = apply(plan(RealServerNetSpec("dr", (VIP,))), ctx)
    ctx.net.links["lo"].addresses.remove("192.0.2.33/32")
    del ctx.sysctl.values["net.ipv4.conf.eth0.arp_ignore"]
    errors = undo(undo_steps, ctx, strict=False)
    assert len(errors) == 1 and "eth0.arp_ignore" in errors[0]
    assert ctx.sysctl.read("net.ipv4.conf.all.arp_ignore") == "0"
    with pytest.raises(NetError):
        undo(undo_steps, ctx)


def test_undo_steps_survive_a_round_trip_through_plain_data():
    ctx = fake_ctx()
    undo_steps = apply(plan(RealServerNetSpec("tun", (VIP,))), ctx)
    again = [step_from_dict(s.to_dict()) for s in undo_steps]
    assert again == undo_steps
    assert {s.to_dict()["op"] for s in again} >= {"sysctl", "addr-del", "link"}


def test_address_steps_compare_addresses_not_spelling():
    ctx = fake_ctx()
    ctx.net.links["lo"].addresses.append("2001:db8:f::33/128")
    assert AddAddress("lo", "2001:0db8:000f::0033/128").apply(ctx) is None
    assert DelAddress("lo", "2001:db8:f:0::33/128").apply(ctx) == AddAddress("lo", "2001:db8:f:0::33/128")


def test_proc_sysctl_reads_and_writes_under_its_root(tmp_path):
    key_path = sysctl_path("net.ipv4.conf.all.arp_ignore", tmp_path)
    key_path.parent.mkdir(parents=True)
    key_path.write_text("0\n")
    s = ProcSysctl(tmp_path)
    assert s.read("net.ipv4.conf.all.arp_ignore") == "0"
    s.write("net.ipv4.conf.all.arp_ignore", "1")
    assert key_path.read_text() == "1\n"
    with pytest.raises(SysctlError):
        s.write("net.ipv4.conf.nosuch.arp_ignore", "1")
    with pytest.raises(SysctlError):
        s.read("net.ipv4.conf.nosuch.arp_ignore")


@pytest.mark.parametrize("key", ["", "net..x", "net.ipv4.conf.../x", "net.ipv4.conf.all.."])
def test_bad_sysctl_keys_are_refused(key):
    with pytest.raises(ValueError):
        sysctl_path(key)
