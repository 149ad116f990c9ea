"""What the failover is given by the director that runs it: callables and options, never the director.

The director builds a :class:`FailoverHooks` (where to publish the status,
whom to tell of a role change or a takeover, the sync daemon role, the health
view) and, for tests and benchmarks, :class:`FailoverOptions` (a fake network,
a clock, shorter timers). This module imports nothing of the rest of the
package, so every part of it may import this one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lvsmail.spec import VrrpInstanceSpec

#: Seconds between two readings of the links' states (see ``Failover._poll``).
TRACK_INTERVAL = 0.2
#: Seconds a resource failure keeps an instance in Fault before it may try again.
RESOURCE_RETRY = 30.0


@dataclass(frozen=True)
class RoleChange:
    """One VRRP instance moved from one role to another (``init`` before its first role)."""

    instance: str
    role: str
    previous: str
    master: str | None


def _ignore(*_args: object) -> None:
    """A hook nobody listens to."""


def _unchecked(_name: str) -> bool | None:
    """No health view: every tracked service counts as not checked (nothing says it is down)."""
    return None


@dataclass(frozen=True)
class FailoverHooks:
    """The callables through which the failover reaches the director."""

    publish: Callable[[dict], None] = _ignore  # the status, on every change: the director writes its state file
    on_role: Callable[[RoleChange], None] = _ignore  # an instance changed role
    on_takeover: Callable[[str, float], None] = _ignore  # (what, seconds) once a backup holds the VIPs
    sync_role: Callable[[], Any] = lambda: None  # the director's SyncRole, None without a sync: section
    service_up: Callable[[str], bool | None] = _unchecked  # any real server up / all down / None: not checked


class AddressBackend(Protocol):
    """The addresses and links the failover reads and changes (``net.iproute.RtnlAddresses`` or a fake).

    Called from the event loop: each call is one small rtnetlink exchange the
    kernel answers inside ``send``.
    """

    def addresses(self, link: str) -> list[str]:
        """``address/prefixlen`` of every address on ``link``."""

    def add_address(self, link: str, cidr: str) -> None:
        """Add an address; EEXIST if present."""

    def del_address(self, link: str, cidr: str) -> None:
        """Remove an address; EADDRNOTAVAIL if absent."""

    def link_states(self) -> dict[str, bool]:
        """Every interface and whether it is operationally up (up with carrier)."""

    def close(self) -> None:
        """Release the backend's socket."""


def socket_transport(spec: VrrpInstanceSpec, primary: str, key: bytes | None) -> Any:
    """The instance's VRRP socket on its interface (multicast, or unicast to its peers)."""
    from lvsmail.vrrp.io import VrrpSocket  # raw sockets: only a running director opens one

    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
    return VrrpSocket(spec.interface, family, primary, peers=spec.unicast_peers, key=key)


@dataclass
class FailoverOptions:
    """How the failover reaches the network and measures time: the real ones unless a test or benchmark says."""

    net: AddressBackend | None = None  # None: the failover opens (and closes) its own rtnetlink socket
    transport_factory: Callable[..., Any] = socket_transport  # (spec, primary, key) -> the VRRP transport
    announcer: Callable[..., Awaitable[None]] | None = None  # (interface, addresses, count, interval); None: real
    clock: Callable[[], float] = time.monotonic
    track_interval: float = TRACK_INTERVAL
    resource_retry: float = RESOURCE_RETRY
