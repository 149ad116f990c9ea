"""The cluster file's ``sync:`` and ``kernel:`` sections: the director's connection sync and sysctls.

``sync:`` configures the IPVS connection-synchronisation daemon, with the
settings ``ipvsadm --start-daemon`` takes (interface, syncid, maxlen, mcast
group, port, ttl) and the role this director plays. ``kernel:`` lists the IPVS
sysctls the director keeps at the value given; each key takes an integer,
``unmanaged`` (leave it to the administrator) or, for the two keys whose right
value follows from the rest of the file, ``auto``.
"""

from __future__ import annotations

import ipaddress
import re

from lvsmail.config.fields import Reader, describe, join
from lvsmail.config.keys import names
from lvsmail.config.tree import Node
from lvsmail.spec import SYNC_ROLES, KernelProfileSpec, SyncSpec

SYNC_KEYS = names("sync")
#: Per key: allowed integer range and whether ``auto`` is accepted.
_KERNEL_RANGES: dict[str, tuple[int, int, bool]] = {
    "expire_nodest_conn": (0, 1, False),
    "expire_quiescent_template": (0, 1, False),
    "conn_reuse_mode": (0, 3, False),  # a bitmap of bits 1 and 2 (Documentation/networking/ipvs-sysctl.rst)
    "backup_only": (0, 1, True),
    "ip_forward": (0, 1, True),
}
#: The keys ``kernel:`` accepts (the documented table decides which), each with its range.
KERNEL_KEYS: dict[str, tuple[int, int, bool]] = {key: _KERNEL_RANGES[key] for key in names("kernel")}
UNMANAGED, AUTO = "unmanaged", "auto"

#: IP_VS_IFNAME_MAXLEN is 16 with the terminating NUL; Linux interface names have no '/' or blanks.
_IFNAME_RE = re.compile(r"[^/\s:]{1,15}\Z")
#: Sync messages are one UDP datagram: at most 65535 minus the IP and UDP headers.
_UDP_V4, _UDP_V6 = 20 + 8, 40 + 8
#: The kernel clamps a backup's receive size to at least this (ip_vs_sync.c).
_MIN_MAXLEN = 1024


def read_sync(r: Reader, node: Node) -> SyncSpec | None:
    """Validate ``sync:``; None (with problems recorded) when it is unusable."""
    e = r.mapping(node, "sync", SYNC_KEYS, required=("interface",))
    if e is None:
        return None
    start = len(r.problems)
    interface = r.string(e["interface"], "sync.interface") if "interface" in e else None
    if interface is not None and (not _IFNAME_RE.match(interface) or interface in (".", "..")):
        r.error(e["interface"], "sync.interface",
                f"{interface!r} is not an interface name (1 to 15 characters, no '/', ':' or blanks)")
    syncid = r.integer(e["syncid"], "sync.syncid", 0, 255) if "syncid" in e else 0
    group = _group(r, e["group"]) if "group" in e else None
    port = r.integer(e["port"], "sync.port", 1, 65535) if "port" in e else None
    ttl = r.integer(e["ttl"], "sync.ttl", 1, 255) if "ttl" in e else None
    maxlen = None
    if "maxlen" in e:
        header = _UDP_V6 if group and ":" in group else _UDP_V4
        maxlen = r.integer(e["maxlen"], "sync.maxlen", _MIN_MAXLEN, 65535 - header)
    role = r.choice(e["role"], "sync.role", SYNC_ROLES, "sync role") if "role" in e else "auto"
    if len(r.problems) > start or interface is None:
        return None
    return SyncSpec(interface=interface, syncid=syncid, maxlen=maxlen, group=group, port=port, ttl=ttl, role=role)


def _group(r: Reader, node: Node) -> str | None:
    """The multicast group the sync messages go to (IPv4 or IPv6)."""
    text = r.string(node, "sync.group")
    if text is None:
        return None
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        r.error(node, "sync.group", f"{text!r} is not an IP address")
        return None
    if not addr.is_multicast:
        r.error(node, "sync.group", f"{text!r} is not a multicast address (the kernel refuses it)")
        return None
    return addr.compressed


def dump_sync(spec: SyncSpec) -> dict:
    """``sync:`` as an administrator writes it: defaults left out."""
    d: dict = {"interface": spec.interface}
    if spec.syncid:
        d["syncid"] = spec.syncid
    for key in ("maxlen", "group", "port", "ttl"):
        if getattr(spec, key) is not None:
            d[key] = getattr(spec, key)
    if spec.role != "auto":
        d["role"] = spec.role
    return d


def read_kernel(r: Reader, node: Node) -> KernelProfileSpec | None:
    """Validate ``kernel:``; keys left out keep their documented defaults."""
    if node.value is None:  # "kernel:" alone: the defaults
        return KernelProfileSpec()
    e = r.mapping(node, "kernel", tuple(KERNEL_KEYS))
    if e is None:
        return None
    start = len(r.problems)
    values = {key: _kernel_value(r, value, join("kernel", key), *KERNEL_KEYS[key]) for key, value in e.items()}
    if len(r.problems) > start:
        return None
    return KernelProfileSpec(**values)


def _kernel_value(r: Reader, node: Node, path: str, low: int, high: int, auto: bool) -> int | str | None:
    """An integer in range, ``unmanaged`` (None) or, where allowed, ``auto``."""
    if isinstance(node.value, str):
        words = (UNMANAGED, AUTO) if auto else (UNMANAGED,)
        if node.value in words:
            return None if node.value == UNMANAGED else AUTO
        r.error(node, path, f"expected an integer from {low} to {high} or {' or '.join(words)}, got {describe(node)}")
        return None
    return r.integer(node, path, low, high)


def dump_kernel(spec: KernelProfileSpec) -> dict:
    """``kernel:`` with only the keys that differ from the defaults."""
    default = KernelProfileSpec()
    out: dict = {}
    for key in KERNEL_KEYS:
        value = getattr(spec, key)
        if value != getattr(default, key):
            out[key] = UNMANAGED if value is None else value
    return out
