"""The cluster file's ``failover:`` section: the director pair's VRRPv3 instances.

Each instance is one virtual router (one VRID on one interface) with the VIPs
it moves and the resource group that moves with them::

    failover:
      interface: eth0
      instances:
        - name: mail-v4
          vrid: 51
          priority: 150
          advert_interval: 0.1      # seconds, centisecond resolution (RFC 5798 §5.2.7)
          vips: [192.0.2.33/24]
          track_services: [smtp]    # no real server of smtp up -> fault
          track_interfaces: [{name: eth1, weight: 60}]
          notify: {master: /usr/local/sbin/vrrp-notify}
          sync: true

The key file is checked (root-only) when the director starts, not here, so a
file can be validated on a machine that does not hold the key.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

from lvsmail.config.fields import Reader, join
from lvsmail.config.keys import names
from lvsmail.config.tree import Node
from lvsmail.spec import FailoverSpec, GarpSpec, NotifySpec, TrackSpec, VrrpInstanceSpec

FAILOVER_KEYS = names("failover")
INSTANCE_KEYS = names("failover.instances[]")
GARP_KEYS = names("failover.instances[].garp")
TRACK_KEYS = names("failover.instances[].track_interfaces[]")
NOTIFY_KEYS = names("failover.instances[].notify")
_IFNAME_RE = re.compile(r"[^/\s:]{1,15}\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_DEFAULT = VrrpInstanceSpec(name="-", vrid=1, interface="-", family="inet", vips=())


def read_failover(r: Reader, node: Node) -> FailoverSpec | None:
    """Validate ``failover:``; None (with problems recorded) when it is unusable."""
    e = r.mapping(node, "failover", FAILOVER_KEYS, required=("instances",))
    if e is None:
        return None
    start = len(r.problems)
    interface = _ifname(r, e["interface"], "failover.interface") if "interface" in e else None
    instances: list[VrrpInstanceSpec] = []
    items = r.sequence(e["instances"], "failover.instances") if "instances" in e else None
    if items is not None and not items:
        r.error(e["instances"], "failover.instances", "needs at least one instance")
    names: dict[str, int | None] = {}
    vrids: dict[tuple[str, str, int], int | None] = {}
    for index, item in enumerate(items or ()):
        path = f"failover.instances[{index}]"
        inst = _instance(r, item, path, interface)
        if inst is None:
            continue
        if inst.name in names:
            r.error(item, join(path, "name"),
                    f"duplicate instance name {inst.name!r} (first at line {names[inst.name]})")
        names.setdefault(inst.name, item.line)
        key = (inst.interface, inst.family, inst.vrid)
        if key in vrids:
            r.error(item, join(path, "vrid"), f"VRID {inst.vrid} is already used on {inst.interface} for "
                                              f"{'IPv6' if inst.family == 'inet6' else 'IPv4'} (line {vrids[key]}); "
                                              "one VRID names one virtual router per interface")
        vrids.setdefault(key, item.line)
        instances.append(inst)
    if len(r.problems) > start:
        return None
    return FailoverSpec(instances=tuple(instances), interface=interface)


def _ifname(r: Reader, node: Node, path: str) -> str | None:
    """A Linux interface name."""
    text = r.string(node, path)
    if text is not None and (not _IFNAME_RE.match(text) or text in (".", "..")):
        r.error(node, path, f"{text!r} is not an interface name (1 to 15 characters, no '/', ':' or blanks)")
        return None
    return text


def _instance(r: Reader, node: Node, path: str, default_if: str | None) -> VrrpInstanceSpec | None:
    """One instance; everything but name, vrid and vips has a default."""
    # Counted before the mapping: a missing required key is a problem found there, and must stop
    # the instance from being built without it (a fuzzed file once ended in a TypeError here).
    start = len(r.problems)
    e = r.mapping(node, path, INSTANCE_KEYS, required=("name", "vrid", "vips"))
    if e is None:
        return None
    values: dict = {}
    if "name" in e:
        name = r.string(e["name"], join(path, "name"))
        if name is not None and not _NAME_RE.match(name):
            r.error(e["name"], join(path, "name"), f"{name!r} is not a valid name (letters, digits, '.', '_', '-')")
        values["name"] = name
    if "vrid" in e:
        values["vrid"] = r.integer(e["vrid"], join(path, "vrid"), 1, 255)
    if "priority" in e:
        # 255 belongs to the router that owns the address as its own (RFC 5798 §5.2.4); 0 is sent only on leaving.
        values["priority"] = r.integer(e["priority"], join(path, "priority"), 1, 255)
    if "advert_interval" in e:
        values["advert_interval"] = _interval(r, e["advert_interval"], join(path, "advert_interval"))
    if "preempt" in e:
        values["preempt"] = r.boolean(e["preempt"], join(path, "preempt"))
    if "preempt_delay" in e:
        values["preempt_delay"] = _seconds_or_zero(r, e["preempt_delay"], join(path, "preempt_delay"))
    if "interface" in e:
        values["interface"] = _ifname(r, e["interface"], join(path, "interface"))
    elif default_if is None:
        r.error(node, path, "no interface: set interface here or under failover")
    else:
        values["interface"] = default_if
    family = None
    if "vips" in e:
        values["vips"], family = _vips(r, e["vips"], join(path, "vips"))
    values["family"] = family
    if "unicast_peers" in e:
        values["unicast_peers"] = _peers(r, e["unicast_peers"], join(path, "unicast_peers"), family)
    if "auth_key_file" in e:
        key = r.string(e["auth_key_file"], join(path, "auth_key_file"))
        if key is not None and not key.startswith("/"):
            r.error(e["auth_key_file"], join(path, "auth_key_file"), f"{key!r} is not an absolute path")
        values["auth_key_file"] = key
    if "garp" in e:
        values["garp"] = _garp(r, e["garp"], join(path, "garp"))
    for key in ("track_interfaces", "track_services"):
        if key in e:
            values[key] = _tracks(r, e[key], join(path, key), key == "track_interfaces")
    if "notify" in e:
        values["notify"] = _notify(r, e["notify"], join(path, "notify"))
    for key in ("on_master", "on_backup"):
        if key in e:
            values[key] = _commands(r, e[key], join(path, key))
    if "sync" in e:
        values["sync"] = r.boolean(e["sync"], join(path, "sync"))
    if len(r.problems) > start or any(v is None for k, v in values.items() if k != "auth_key_file"):
        return None
    return VrrpInstanceSpec(**values)


def _interval(r: Reader, node: Node, path: str) -> float | None:
    """Seconds between adverts: 0.01 to 40.95, a whole number of centiseconds (the 12-bit field)."""
    value = r.number(node, path)
    if value is None:
        return None
    cs = value * 100
    if not 1 <= round(cs) <= 4095 or abs(cs - round(cs)) > 1e-6:
        r.error(node, path, f"must be between 0.01 and 40.95 seconds in steps of 0.01, got {value:g}")
        return None
    return round(cs) / 100


def _seconds_or_zero(r: Reader, node: Node, path: str) -> float | None:
    """A number of seconds, zero allowed."""
    if node.value == 0 and not isinstance(node.value, bool):
        return 0.0
    return r.number(node, path)


def _vips(r: Reader, node: Node, path: str) -> tuple[tuple[str, ...] | None, str | None]:
    """``address`` or ``address/prefixlen`` entries, one family, each once."""
    items = r.sequence(node, path)
    if items is None:
        return None, None
    if not items:
        r.error(node, path, "needs at least one address")
        return None, None
    out: list[str] = []
    families: dict[int, int | None] = {}
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        text = r.string(item, where)
        if text is None:
            continue
        try:
            iface = ipaddress.ip_interface(text.strip())
        except ValueError:
            r.error(item, where, f"{text!r} is not an address or address/prefixlen")
            continue
        if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback:
            r.error(item, where, f"{text!r} is not a unicast address")
            continue
        cidr = str(iface)
        if cidr in out or any(str(ipaddress.ip_interface(o).ip) == str(iface.ip) for o in out):
            r.error(item, where, f"{iface.ip} is listed twice")
            continue
        families.setdefault(iface.version, item.line)
        out.append(cidr)
    if len(families) > 1:
        r.error(node, path, "mixes IPv4 and IPv6: a VRRP instance carries one family (RFC 5798 §5.2.5); "
                            "use one instance per family")
        return None, None
    if not out:
        return None, None
    return tuple(out), "inet6" if 6 in families else "inet"


def _peers(r: Reader, node: Node, path: str, family: str | None) -> tuple[str, ...] | None:
    """Unicast peers' addresses, in the instance's family."""
    items = r.sequence(node, path)
    if items is None:
        return None
    out = []
    for index, item in enumerate(items):
        addr = r.address(item, f"{path}[{index}]")
        if addr is None:
            continue
        if family is not None and (":" in addr) != (family == "inet6"):
            r.error(item, f"{path}[{index}]", f"{addr} is not of the VIPs' address family")
            continue
        out.append(addr)
    return tuple(out)


def _garp(r: Reader, node: Node, path: str) -> GarpSpec | None:
    """Repeat count (1..100), interval and refresh (the second set's delay, 0 for none) of the announcements."""
    e = r.mapping(node, path, GARP_KEYS)
    if e is None:
        return None
    count = r.integer(e["count"], join(path, "count"), 1, 100) if "count" in e else GarpSpec.count
    interval = r.number(e["interval"], join(path, "interval")) if "interval" in e else GarpSpec.interval
    refresh = _seconds_or_zero(r, e["refresh"], join(path, "refresh")) if "refresh" in e else GarpSpec.refresh
    if count is None or interval is None or refresh is None:
        return None
    return GarpSpec(count=count, interval=interval, refresh=refresh)


def _tracks(r: Reader, node: Node, path: str, interfaces: bool) -> tuple[TrackSpec, ...] | None:
    """Names, or ``{name, weight}`` mappings; weight 0 (or none) means fault when down."""
    items = r.sequence(node, path)
    if items is None:
        return None
    out: list[TrackSpec] = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        weight = 0
        if item.is_mapping:
            e = r.mapping(item, where, TRACK_KEYS, required=("name",)) or {}
            name_node = e.get("name")
            if "weight" in e:
                weight = r.integer(e["weight"], join(where, "weight"), 0, 254)
        else:
            name_node = item
        if name_node is None:
            continue
        name = _ifname(r, name_node, where) if interfaces else r.string(name_node, where)
        if name is None or weight is None:
            continue
        if any(t.name == name for t in out):
            r.error(item, where, f"{name!r} is tracked twice")
            continue
        out.append(TrackSpec(name=name, weight=weight))
    return tuple(out)


def _argv(r: Reader, node: Node, path: str) -> tuple[str, ...] | None:
    """A command: a string split like a shell would (no shell runs it) or a list of arguments."""
    if isinstance(node.value, list):
        args = [r.string(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if any(a is None for a in args):
            return None
        argv = args
    else:
        text = r.string(node, path)
        if text is None:
            return None
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            r.error(node, path, f"cannot split {text!r} into arguments: {exc}")
            return None
    if not argv:
        r.error(node, path, "empty command")
        return None
    if not argv[0].startswith("/"):
        r.error(node, path, f"{argv[0]!r}: give the program's absolute path (the director's PATH is not yours)")
        return None
    return tuple(argv)


def _notify(r: Reader, node: Node, path: str) -> NotifySpec | None:
    """One command per role."""
    e = r.mapping(node, path, NOTIFY_KEYS)
    if e is None:
        return None
    values = {key: _argv(r, value, join(path, key)) for key, value in e.items()}
    if any(v is None for v in values.values()):
        return None
    return NotifySpec(**values)


def _commands(r: Reader, node: Node, path: str) -> tuple[tuple[str, ...], ...] | None:
    """A list of commands run in order, each a string or a list of arguments (or one command alone)."""
    if not isinstance(node.value, list):
        argv = _argv(r, node, path)
        return None if argv is None else (argv,)
    out = [_argv(r, item, f"{path}[{index}]") for index, item in enumerate(node.value)]
    return None if any(a is None for a in out) else tuple(out)


def dump_failover(spec: FailoverSpec) -> dict:
    """The section as an administrator would write it: defaults left out."""
    out: dict = {}
    if spec.interface:
        out["interface"] = spec.interface
    out["instances"] = [_dump_instance(i, spec.interface) for i in spec.instances]
    return out


def _dump_instance(i: VrrpInstanceSpec, default_if: str | None) -> dict:
    d: dict = {"name": i.name, "vrid": i.vrid}
    for key in ("priority", "advert_interval", "preempt", "preempt_delay"):
        if getattr(i, key) != getattr(_DEFAULT, key):
            d[key] = getattr(i, key)
    if i.interface != default_if:
        d["interface"] = i.interface
    d["vips"] = list(i.vips)
    if i.unicast_peers:
        d["unicast_peers"] = list(i.unicast_peers)
    if i.auth_key_file:
        d["auth_key_file"] = i.auth_key_file
    if i.garp != GarpSpec():
        d["garp"] = {"count": i.garp.count, "interval": i.garp.interval, "refresh": i.garp.refresh}
    for key in ("track_interfaces", "track_services"):
        tracks = getattr(i, key)
        if tracks:
            d[key] = [t.name if t.weight == 0 else {"name": t.name, "weight": t.weight} for t in tracks]
    notify = {k: list(getattr(i.notify, k)) for k in NOTIFY_KEYS if getattr(i.notify, k)}
    if notify:
        d["notify"] = notify
    for key in ("on_master", "on_backup"):
        if getattr(i, key):
            d[key] = [list(argv) for argv in getattr(i, key)]
    if i.sync:
        d["sync"] = True
    return d
