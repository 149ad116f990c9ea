"""The real :class:`~lvsmail.net.backend.NetBackend`: rtnetlink through pyroute2.

The netlink socket belongs to the network namespace of the thread that creates
the backend, so create it inside the namespace you mean to change (for instance
within ``run_in_netns``) and close it there or later from any thread.
pyroute2 is imported on first use: it is slow to import, and unit tests of plans
never need it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from lvsmail.net.backend import NetError

_FAMILY = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
_DEFAULT = {"inet": "0.0.0.0/0", "inet6": "::/0"}
IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254


class IPRouteBackend:
    """Links, addresses and default routes of the current namespace via rtnetlink."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute  # deferred: see module docstring

        self.ipr = IPRoute()

    def close(self) -> None:
        """Close the netlink socket."""
        self.ipr.close()

    def __enter__(self) -> "IPRouteBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _index(self, link: str) -> int:
        """Interface index or ENODEV."""
        found = self.ipr.link_lookup(ifname=link)
        if not found:
            raise NetError(errno.ENODEV, f"no such device {link}")
        return found[0]

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a pyroute2 call, turning netlink errors into NetError with the operation named."""
        from pyroute2 import NetlinkError

        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise NetError(exc.code, f"{what}: {exc}") from exc

    def link_exists(self, link: str) -> bool:
        """Whether the interface exists."""
        return bool(self.ipr.link_lookup(ifname=link))

    def link_is_up(self, link: str) -> bool:
        """IFF_UP of the interface."""
        msg = self.ipr.get_links(self._index(link))[0]
        return bool(msg["flags"] & 1)

    def set_link_state(self, link: str, up: bool) -> None:
        """``ip link set LINK up|down``."""
        self._call(f"link set {link}", self.ipr.link, "set", index=self._index(link),
                   state="up" if up else "down")

    def addresses(self, link: str) -> list[str]:
        """``address/prefixlen`` of every address on the interface."""
        out = []
        for msg in self.ipr.get_addr(index=self._index(link)):
            addr = msg.get_attr("IFA_ADDRESS")
            if msg["family"] == socket.AF_INET:
                addr = msg.get_attr("IFA_LOCAL") or addr
            out.append(f"{addr}/{msg['prefixlen']}")
        return out

    def add_address(self, link: str, cidr: str) -> None:
        """``ip addr add CIDR dev LINK`` (IPv6 without duplicate address detection)."""
        iface = ipaddress.ip_interface(cidr)
        kwargs = {"index": self._index(link), "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
        if iface.version == 6:
            kwargs.update(family=socket.AF_INET6, flags=IFA_F_NODAD)
        self._call(f"addr add {cidr} dev {link}", self.ipr.addr, "add", **kwargs)

    def del_address(self, link: str, cidr: str) -> None:
        """``ip addr del CIDR dev LINK``."""
        iface = ipaddress.ip_interface(cidr)
        kwargs = {"index": self._index(link), "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
        if iface.version == 6:
            kwargs["family"] = socket.AF_INET6
        self._call(f"addr del {cidr} dev {link}", self.ipr.addr, "del", **kwargs)

    def default_route(self, family: str) -> str | None:
        """Gateway of the main table's default route, if any."""
        for msg in self.ipr.get_routes(family=_FAMILY[family], table=RT_TABLE_MAIN):
            if msg["dst_len"] == 0 and msg.get_attr("RTA_DST") in (None, "0.0.0.0", "::"):
                gw = msg.get_attr("RTA_GATEWAY")
                if gw:
                    return gw
        return None

    def set_default_route(self, family: str, gateway: str) -> None:
        """``ip route replace default via GATEWAY``."""
        self._call(f"route replace default via {gateway}", self.ipr.route, "replace",
                   dst=_DEFAULT[family], gateway=gateway, family=_FAMILY[family])

    def del_default_route(self, family: str) -> None:
        """``ip route del default``."""
        self._call("route del default", self.ipr.route, "del", dst=_DEFAULT[family], family=_FAMILY[family])
