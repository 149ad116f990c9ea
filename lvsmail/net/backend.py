"""Links, addresses, routes and kernel modules behind small interfaces, with fakes.

The real implementations talk netlink (pyroute2, in the iproute module) and
modprobe; the fakes here remember state and refuse what the kernel would refuse
(an address on a missing link, a gateway that is not on a connected network, a
duplicate address), so plans tested against them fail the way they would on a
real machine.
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lvsmail.net.sysctl import FakeSysctl, conf_key


class NetError(OSError):
    """A link, address or route operation failed (errno says why)."""


def family_of(address: str) -> str:
    """``inet`` or ``inet6`` for an address or network in any notation."""
    return "inet6" if ipaddress.ip_interface(address).version == 6 else "inet"


class NetBackend(Protocol):
    """Links, addresses and default routes in the current network namespace."""

    def link_exists(self, link: str) -> bool:
        """Whether an interface of that name exists."""

    def link_is_up(self, link: str) -> bool:
        """Whether the interface is administratively up."""

    def link_names(self) -> list[str]:
        """Names of every interface."""

    def link_states(self) -> dict[str, bool]:
        """Every interface and whether it is operationally up (administratively up, with carrier)."""

    def set_link_state(self, link: str, up: bool) -> None:
        """Bring the interface up or down."""

    def addresses(self, link: str) -> list[str]:
        """Addresses on the interface as ``address/prefixlen``."""

    def add_address(self, link: str, cidr: str) -> None:
        """Add ``address/prefixlen`` to the interface; EEXIST if present."""

    def del_address(self, link: str, cidr: str) -> None:
        """Remove ``address/prefixlen`` from the interface."""

    def default_route(self, family: str) -> str | None:
        """Gateway of the main table's default route for ``family``, or None if there is none."""

    def set_default_route(self, family: str, gateway: str) -> None:
        """Create or replace the default route to go via ``gateway``."""

    def del_default_route(self, family: str) -> None:
        """Remove the default route of ``family``."""


class ModuleLoader(Protocol):
    """Kernel modules (global to the machine, not per namespace)."""

    def loaded(self, name: str) -> bool:
        """Whether the module is loaded (or built in)."""

    def load(self, name: str) -> None:
        """Load the module; NetError if it cannot be."""

    def can_load(self, name: str) -> bool:
        """Whether the module is loaded or could be (preflight, changes nothing)."""


class KernelModules:
    """Modules through /sys/module and /sbin/modprobe."""

    def loaded(self, name: str) -> bool:
        """A module shows up in /sys/module when loaded or built in."""
        return Path("/sys/module", name).exists()

    def load(self, name: str) -> None:
        """Run modprobe; there is no netlink interface for loading modules."""
        exe = shutil.which("modprobe", path="/sbin:/usr/sbin:/bin:/usr/bin")
        if exe is None:
            raise NetError(errno.ENOENT, f"cannot load {name}: no modprobe")
        done = subprocess.run([exe, name], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise NetError(errno.ENOENT, f"modprobe {name}: {done.stderr.strip() or done.returncode}")

    def can_load(self, name: str) -> bool:
        """Loaded, or ``modprobe --dry-run`` finds it for this kernel."""
        if self.loaded(name):
            return True
        exe = shutil.which("modprobe", path="/sbin:/usr/sbin:/bin:/usr/bin")
        if exe is None:
            return False
        done = subprocess.run([exe, "--dry-run", "--quiet", name], stdin=subprocess.DEVNULL, capture_output=True)
        return done.returncode == 0


@dataclass
class FakeLink:
    """One interface of :class:`FakeNetBackend`."""

    up: bool = False
    addresses: list[str] = field(default_factory=list)
    carrier: bool = True  # the cable (or veth peer): link_states reports up only with carrier


class FakeNetBackend:
    """In-memory links, addresses and default routes that refuse impossible operations."""

    def __init__(self, links: dict[str, FakeLink] | None = None,
                 default_routes: dict[str, str] | None = None) -> None:
        self.links = links if links is not None else {
            "lo": FakeLink(True, ["127.0.0.1/8", "::1/128"]),
            "eth0": FakeLink(True, ["198.51.100.20/24", "2001:db8:5::20/64"]),
        }
        self.routes: dict[str, str] = dict(default_routes or {})
        self.calls: list[tuple] = []

    def _link(self, link: str) -> FakeLink:
        """The link or ENODEV."""
        if link not in self.links:
            raise NetError(errno.ENODEV, f"no such device {link}")
        return self.links[link]

    def link_exists(self, link: str) -> bool:
        """Whether the fake has the link."""
        return link in self.links

    def link_is_up(self, link: str) -> bool:
        """Administrative state."""
        return self._link(link).up

    def link_names(self) -> list[str]:
        """Names of the fake's links."""
        return list(self.links)

    def link_states(self) -> dict[str, bool]:
        """Operational state of every fake link."""
        return {name: ln.up and ln.carrier for name, ln in self.links.items()}

    def set_link_state(self, link: str, up: bool) -> None:
        """Set administrative state."""
        self._link(link).up = up
        self.calls.append(("link", link, "up" if up else "down"))

    def addresses(self, link: str) -> list[str]:
        """Addresses on the link."""
        return list(self._link(link).addresses)

    def add_address(self, link: str, cidr: str) -> None:
        """Add an address; EEXIST for a duplicate, as the kernel answers."""
        ln = self._link(link)
        norm = str(ipaddress.ip_interface(cidr))
        if norm in ln.addresses:
            raise NetError(errno.EEXIST, f"{norm} already on {link}")
        ln.addresses.append(norm)
        self.calls.append(("addr add", link, norm))

    def del_address(self, link: str, cidr: str) -> None:
        """Remove an address; EADDRNOTAVAIL if absent."""
        ln = self._link(link)
        norm = str(ipaddress.ip_interface(cidr))
        if norm not in ln.addresses:
            raise NetError(errno.EADDRNOTAVAIL, f"{norm} not on {link}")
        ln.addresses.remove(norm)
        self.calls.append(("addr del", link, norm))

    def default_route(self, family: str) -> str | None:
        """Current default gateway."""
        return self.routes.get(family)

    def set_default_route(self, family: str, gateway: str) -> None:
        """Replace the default route; ENETUNREACH unless the gateway is on a connected network."""
        gw = ipaddress.ip_address(gateway)
        onlink = any(
            gw in ipaddress.ip_interface(a).network and gw != ipaddress.ip_interface(a).ip
            for ln in self.links.values() if ln.up for a in ln.addresses
            if ipaddress.ip_interface(a).network.prefixlen < gw.max_prefixlen
        )
        if not onlink:
            raise NetError(errno.ENETUNREACH, f"gateway {gateway} is not on a connected network")
        self.routes[family] = str(gw)
        self.calls.append(("route replace default", family, str(gw)))

    def del_default_route(self, family: str) -> None:
        """Remove the default route; ESRCH if there is none."""
        if family not in self.routes:
            raise NetError(errno.ESRCH, f"no {family} default route")
        del self.routes[family]
        self.calls.append(("route del default", family))


#: What loading a tunnel module creates in every namespace: the fallback device.
MODULE_LINKS = {"ipip": "tunl0", "ip6_tunnel": "ip6tnl0"}


class FakeModules:
    """Modules that, like the kernel's tunnel modules, create their fallback link when loaded."""

    def __init__(self, net: FakeNetBackend | None = None, sysctl: FakeSysctl | None = None,
                 available: tuple[str, ...] = ("ipip", "ip6_tunnel"), loaded: tuple[str, ...] = ()) -> None:
        self.net, self.sysctl = net, sysctl
        self.available = set(available)
        self.modules = set(loaded)
        self.loads: list[str] = []

    def loaded(self, name: str) -> bool:
        """Whether it was loaded."""
        return name in self.modules

    def can_load(self, name: str) -> bool:
        """Loaded or available."""
        return name in self.modules or name in self.available

    def load(self, name: str) -> None:
        """Load an available module and create its fallback link (down) with its sysctls."""
        if name not in self.available:
            raise NetError(errno.ENOENT, f"modprobe {name}: module not found")
        self.modules.add(name)
        self.loads.append(name)
        link = MODULE_LINKS.get(name)
        if link and self.net is not None and link not in self.net.links:
            self.net.links[link] = FakeLink(False, [])
            if self.sysctl is not None and name == "ipip":
                for key in ("rp_filter", "arp_ignore", "arp_announce"):
                    self.sysctl.values.setdefault(conf_key("inet", link, key), "0")
