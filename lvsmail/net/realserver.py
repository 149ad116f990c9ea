"""Network setup of an LVS real server, as a plan of small reversible steps.

What each forwarding method needs on the real server (LVS-HOWTO, ipvsadm(8)):

* **tun** (IP-in-IP): the director wraps the client's packet in an IPv4 header
  addressed to the real server. The ``ipip`` module's fallback device ``tunl0``
  decapsulates it; the VIP sits on ``tunl0`` so the inner packet is local, and
  the reply goes straight to the client with the VIP as source. The inner
  packet arrives on ``tunl0`` but the route back to the client is via the normal
  interface, so strict reverse-path filtering would drop it: ``rp_filter`` is 0 on
  ``tunl0`` *and* on ``all``, because the kernel applies max(all, interface).
* **dr** (direct routing): the director only rewrites the destination MAC; the
  packet still carries the VIP, which the real server holds on ``lo``.
* both tun and dr: the real server must never answer ARP for the VIP, or the
  router would send clients to it directly: ``arp_ignore=1`` (answer only for
  addresses on the receiving interface) and ``arp_announce=2`` (never use the VIP
  as source of our own ARP requests), on ``all`` and on the interface facing the
  director (the kernel uses the maximum of the two).
* **IPv6**: neighbour discovery answers only for addresses on the receiving
  interface, so an IPv6 VIP on ``lo`` (dr) or ``ip6tnl0`` (tun, from the
  ``ip6_tunnel`` module) needs no ARP-like setting, and IPv6 has no ``rp_filter``.
* **nat**: the director rewrites the destination to the real server and the
  reply must go back through it to be rewritten again, so the default route points
  at the director's inside address; no VIP on the real server.

Sysctls are set before the VIP is added, so there is no moment in which the real
server holds the VIP and still answers ARP for it. Each step applied returns the
step that undoes it (with the previous value it found), so ``undo`` restores the
machine as it was; a step that found the wanted state already there returns None
and is not undone. Kernel modules are never unloaded (other users may hold them).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from lvsmail.net.backend import KernelModules, ModuleLoader, NetBackend, NetError, family_of
from lvsmail.net.sysctl import ProcSysctl, SysctlBackend, conf_key

FORWARDING = ("dr", "tun", "nat")

#: Fallback tunnel device and module for each address family.
TUNNEL = {"inet": ("ipip", "tunl0"), "inet6": ("ip6_tunnel", "ip6tnl0")}


@dataclass(frozen=True)
class RealServerNetSpec:
    """What a real server's network must look like for one forwarding method."""

    forwarding: str
    vips: tuple[str, ...] = ()
    director: str | None = None  # director's inside address: the NAT gateway
    interface: str = "eth0"  # interface facing the director


@dataclass
class NetContext:
    """The side-effect backends a plan is applied with (all in one network namespace)."""

    net: NetBackend
    sysctl: SysctlBackend
    modules: ModuleLoader


class Step:
    """One reversible change; ``apply`` returns the step that undoes it, or None."""

    op: ClassVar[str] = ""

    def describe(self) -> str:
        """The change in the words of the equivalent command."""
        raise NotImplementedError

    def apply(self, ctx: NetContext) -> Step | None:
        """Make the change and return its undo step (None when nothing changed)."""
        raise NotImplementedError

    def pending(self, ctx: NetContext) -> bool:
        """Whether ``apply`` would change something now (read-only; for dry runs)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Plain form for a state file (``op`` plus fields)."""
        return {"op": self.op, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class LoadModule(Step):
    """Load a kernel module unless already loaded; never undone."""

    op: ClassVar[str] = "module"
    name: str

    def describe(self) -> str:
        """Equivalent command."""
        return f"modprobe {self.name}"

    def apply(self, ctx: NetContext) -> Step | None:
        """Load if missing."""
        if not ctx.modules.loaded(self.name):
            ctx.modules.load(self.name)
        return None

    def pending(self, ctx: NetContext) -> bool:
        """Pending while the module is not loaded."""
        return not ctx.modules.loaded(self.name)


@dataclass(frozen=True)
class SetLinkState(Step):
    """Bring a link up or down."""

    op: ClassVar[str] = "link"
    link: str
    up: bool = True

    def describe(self) -> str:
        """Equivalent command."""
        return f"ip link set {self.link} {'up' if self.up else 'down'}"

    def apply(self, ctx: NetContext) -> Step | None:
        """Change the state if it differs."""
        if ctx.net.link_is_up(self.link) == self.up:
            return None
        ctx.net.set_link_state(self.link, self.up)
        return SetLinkState(self.link, not self.up)

    def pending(self, ctx: NetContext) -> bool:
        """A link that does not exist yet (tunl0 before its module) is pending too."""
        return not ctx.net.link_exists(self.link) or ctx.net.link_is_up(self.link) != self.up


@dataclass(frozen=True)
class SetSysctl(Step):
    """Set one sysctl, remembering the value it replaces."""

    op: ClassVar[str] = "sysctl"
    key: str
    value: str

    def describe(self) -> str:
        """Equivalent command."""
        return f"sysctl -w {self.key}={self.value}"

    def apply(self, ctx: NetContext) -> Step | None:
        """Write if different; the undo step writes the old value back."""
        old = ctx.sysctl.read(self.key)
        if old == str(self.value):
            return None
        ctx.sysctl.write(self.key, str(self.value))
        return SetSysctl(self.key, old)

    def pending(self, ctx: NetContext) -> bool:
        """A key that does not exist yet (an interface still to come) is pending too."""
        try:
            return ctx.sysctl.read(self.key) != str(self.value)
        except OSError:
            return True


@dataclass(frozen=True)
class AddAddress(Step):
    """Add an address to a link."""

    op: ClassVar[str] = "addr-add"
    link: str
    cidr: str

    def describe(self) -> str:
        """Equivalent command."""
        return f"ip addr add {self.cidr} dev {self.link}"

    def apply(self, ctx: NetContext) -> Step | None:
        """Add unless present."""
        want = ipaddress.ip_interface(self.cidr)
        if any(ipaddress.ip_interface(a) == want for a in ctx.net.addresses(self.link)):
            return None
        ctx.net.add_address(self.link, self.cidr)
        return DelAddress(self.link, self.cidr)

    def pending(self, ctx: NetContext) -> bool:
        """Pending unless the address is on the link."""
        if not ctx.net.link_exists(self.link):
            return True
        want = ipaddress.ip_interface(self.cidr)
        return not any(ipaddress.ip_interface(a) == want for a in ctx.net.addresses(self.link))


@dataclass(frozen=True)
class DelAddress(Step):
    """Remove an address from a link."""

    op: ClassVar[str] = "addr-del"
    link: str
    cidr: str

    def describe(self) -> str:
        """Equivalent command."""
        return f"ip addr del {self.cidr} dev {self.link}"

    def apply(self, ctx: NetContext) -> Step | None:
        """Remove if present (a link that vanished took its addresses with it)."""
        if not ctx.net.link_exists(self.link):
            return None
        want = ipaddress.ip_interface(self.cidr)
        if not any(ipaddress.ip_interface(a) == want for a in ctx.net.addresses(self.link)):
            return None
        ctx.net.del_address(self.link, self.cidr)
        return AddAddress(self.link, self.cidr)

    def pending(self, ctx: NetContext) -> bool:
        """Pending while the address is on the link."""
        if not ctx.net.link_exists(self.link):
            return False
        want = ipaddress.ip_interface(self.cidr)
        return any(ipaddress.ip_interface(a) == want for a in ctx.net.addresses(self.link))


@dataclass(frozen=True)
class SetDefaultRoute(Step):
    """Point the default route at a gateway (None removes it), remembering the old one."""

    op: ClassVar[str] = "default-route"
    family: str
    gateway: str | None

    def describe(self) -> str:
        """Equivalent command."""
        six = " -6" if self.family == "inet6" else ""
        if self.gateway is None:
            return f"ip{six} route del default"
        return f"ip{six} route replace default via {self.gateway}"

    def apply(self, ctx: NetContext) -> Step | None:
        """Replace or delete the default route if it differs."""
        old = ctx.net.default_route(self.family)
        if old == self.gateway:
            return None
        if self.gateway is None:
            ctx.net.del_default_route(self.family)
        else:
            ctx.net.set_default_route(self.family, self.gateway)
        return SetDefaultRoute(self.family, old)

    def pending(self, ctx: NetContext) -> bool:
        """Pending unless the default route already goes via the gateway."""
        return ctx.net.default_route(self.family) != self.gateway


STEP_TYPES: dict[str, type[Step]] = {
    cls.op: cls for cls in (LoadModule, SetLinkState, SetSysctl, AddAddress, DelAddress, SetDefaultRoute)
}


def step_from_dict(data: dict) -> Step:
    """Inverse of ``Step.to_dict`` (for reading undo steps back from a state file)."""
    data = dict(data)
    return STEP_TYPES[data.pop("op")](**data)


def host_cidr(vip: str) -> str:
    """The VIP as a host route: ``/32`` for IPv4, ``/128`` for IPv6."""
    ip = ipaddress.ip_address(vip)
    return f"{ip}/{ip.max_prefixlen}"


def _arp_steps(interface: str) -> list[Step]:
    """arp_ignore=1 and arp_announce=2 on ``all`` and the interface facing the director."""
    return [
        SetSysctl(conf_key("inet", "all", "arp_ignore"), "1"),
        SetSysctl(conf_key("inet", "all", "arp_announce"), "2"),
        SetSysctl(conf_key("inet", interface, "arp_ignore"), "1"),
        SetSysctl(conf_key("inet", interface, "arp_announce"), "2"),
    ]


def plan(spec: RealServerNetSpec) -> list[Step]:
    """The ordered steps that prepare a real server for ``spec`` (pure; ValueError if impossible)."""
    if spec.forwarding not in FORWARDING:
        raise ValueError(f"forwarding must be one of {', '.join(FORWARDING)}, not {spec.forwarding!r}")
    vips = [str(ipaddress.ip_address(v)) for v in spec.vips]
    if len(set(vips)) != len(vips):
        raise ValueError(f"duplicate VIP in {', '.join(spec.vips)}")

    if spec.forwarding == "nat":
        if spec.director is None:
            raise ValueError("nat needs the director's inside address as default gateway")
        gw = str(ipaddress.ip_address(spec.director))
        # No VIP: the director rewrites the destination to our own address.
        return [SetDefaultRoute(family_of(gw), gw)]

    if not vips:
        raise ValueError(f"{spec.forwarding} needs at least one VIP on the real server")
    v4 = [v for v in vips if family_of(v) == "inet"]
    v6 = [v for v in vips if family_of(v) == "inet6"]
    steps: list[Step] = []
    if spec.forwarding == "tun":
        for fam, fam_vips in (("inet", v4), ("inet6", v6)):
            if fam_vips:
                module, link = TUNNEL[fam]
                steps += [LoadModule(module), SetLinkState(link, True)]
        if v4:
            steps += [SetSysctl(conf_key("inet", "all", "rp_filter"), "0"),
                      SetSysctl(conf_key("inet", TUNNEL["inet"][1], "rp_filter"), "0")]
    if v4:
        steps += _arp_steps(spec.interface)
    for vip in vips:
        link = TUNNEL[family_of(vip)][1] if spec.forwarding == "tun" else "lo"
        steps.append(AddAddress(link, host_cidr(vip)))
    return steps


def describe(steps: list[Step]) -> list[str]:
    """One line per step, in order."""
    return [s.describe() for s in steps]


class ApplyError(NetError):
    """A step failed; the steps before it were rolled back (``rollback_errors`` lists any that were not)."""

    def __init__(self, step: Step, cause: BaseException, rollback_errors: list[str]) -> None:
        code = getattr(cause, "errno", None) or errno.EIO
        super().__init__(code, f"{step.describe()}: {cause}")
        self.step, self.cause, self.rollback_errors = step, cause, rollback_errors


def apply(steps: list[Step], ctx: NetContext) -> list[Step]:
    """Apply ``steps`` in order and return the undo steps (to apply in the order given).

    If a step fails, the steps already applied are undone and ApplyError is raised.
    """
    undo_steps: list[Step] = []
    for step in steps:
        try:
            inverse = step.apply(ctx)
        except Exception as exc:
            raise ApplyError(step, exc, undo(undo_steps, ctx, strict=False)) from exc
        if inverse is not None:
            undo_steps.insert(0, inverse)
    return undo_steps


def undo(undo_steps: list[Step], ctx: NetContext, strict: bool = True) -> list[str]:
    """Apply undo steps, carrying on past failures; return the failures (raise if ``strict``)."""
    errors = []
    for step in undo_steps:
        try:
            step.apply(ctx)
        except Exception as exc:
            errors.append(f"{step.describe()}: {exc}")
    if errors and strict:
        raise NetError(errno.EIO, "undo incomplete: " + "; ".join(errors))
    return errors


def local_context() -> NetContext:
    """Real backends for the network namespace of the calling thread (close ``ctx.net`` after)."""
    from lvsmail.net.iproute import IPRouteBackend

    return NetContext(net=IPRouteBackend(), sysctl=ProcSysctl(), modules=KernelModules())


def setup(spec: RealServerNetSpec) -> list[Step]:
    """Plan and apply ``spec`` here (in the calling thread's namespace); return the undo steps."""
    steps = plan(spec)
    ctx = local_context()
    try:
        return apply(steps, ctx)
    finally:
        ctx.net.close()


def teardown(undo_steps: list[Step]) -> list[str]:
    """Apply undo steps here; return what could not be undone."""
    ctx = local_context()
    try:
        return undo(undo_steps, ctx, strict=False)
    finally:
        ctx.net.close()
