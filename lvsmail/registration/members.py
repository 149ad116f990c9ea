"""Joined members on the director: validation against the cluster file, persistence, and the merge.

The cluster file stays the single description of the static cluster; members that
joined through the API live in their own state file next to the director's other
state, and ``with_members`` lays them over the file's spec wherever the director
computes its desired table or health targets. A reload of the file therefore never
forgets a member, and a member never edits the file.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from lvsmail.registration.protocol import Member, ProtocolError
from lvsmail.spec import ClusterSpec, RealServerSpec, ServiceSpec
from lvsmail.statefiles import write_json

log = logging.getLogger("lvsmail.registration")


class Refusal(Exception):
    """A request the director will not carry out; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class JoinedMember:
    """A member as the director keeps it: what it offered, whether it is draining, since when."""

    member: Member
    drained: bool = False
    since: float = 0.0  # wall-clock time of the registration

    def to_json(self) -> dict:
        """The persisted and reported form."""
        return {**self.member.to_json(), "drained": self.drained, "since": self.since}

    @classmethod
    def from_json(cls, data: dict) -> JoinedMember:
        """Inverse of to_json; ProtocolError when the entry is not one."""
        if not isinstance(data, dict):
            raise ProtocolError("a member entry must be an object")
        fields = dict(data)
        drained, since = fields.pop("drained", False), fields.pop("since", 0.0)
        if not isinstance(drained, bool) or not isinstance(since, (int, float)):
            raise ProtocolError("drained must be true/false and since a number")
        return cls(Member.from_json(fields), drained, float(since))


def static_addresses(spec: ClusterSpec) -> set[str]:
    """Every address the cluster file itself names as a real server or fallback."""
    found = set()
    for svc in spec.services:
        found.update(rs.address for rs in svc.realservers)
        if svc.fallback is not None:
            found.add(svc.fallback.address)
    return found


def in_networks(address: str, networks: Iterable[str]) -> bool:
    """True when ``address`` lies inside one of the CIDR ``networks``."""
    addr = ipaddress.ip_address(address)
    return any(addr in ipaddress.ip_network(net) for net in networks)


def validate_member(spec: ClusterSpec, member: Member) -> None:
    """Refuse a member the cluster file does not allow; return quietly when it may join.

    The address must lie in ``allowed_networks`` (403), must not already be a static real server
    (409: the file manages it), and each service must exist with a port its forwarding can reach and an
    address family it can carry (422): tun alone mixes families, and not beside ``sync:`` (the loader's rule).
    """
    reg = spec.registration
    networks = reg.allowed_networks if reg else ()
    if not in_networks(member.address, networks):
        raise Refusal(403, f"{member.address} is outside the allowed networks ({', '.join(networks) or 'none'})")
    if member.address in static_addresses(spec):
        raise Refusal(409, f"{member.address} is a static real server in the cluster file; it cannot also join")
    services = {svc.name: svc for svc in spec.services}
    for name in member.services:
        svc = services.get(name)
        if svc is None:
            raise Refusal(422, f"unknown service {name!r}; the cluster file has {', '.join(services) or 'none'}")
        port = _port(svc, member)
        if svc.forwarding in ("dr", "tun") and svc.port is not None and port != svc.port:
            raise Refusal(422, f"service {name!r} forwards with {svc.forwarding}, which cannot change ports: "
                               f"the member must listen on {svc.port}, not {port}")
        why = family_mismatch(spec, svc, member.address)
        if why:
            raise Refusal(422, why)


def family_mismatch(spec: ClusterSpec, svc: ServiceSpec, address: str) -> str | None:
    """Why ``svc`` cannot carry a real server at ``address`` for its address family, or None when it can.

    Only tun mixes IPv4 and IPv6, and not in a cluster with ``sync:``: the kernel runs no connection
    sync daemon beside such a real server (the loader's rule for the file, applied to members).
    """
    family = "inet6" if ":" in address else "inet"
    if family == svc.family:
        return None
    if svc.forwarding != "tun":
        return f"{address} and service {svc.name!r} are of different address families (only tun forwarding mixes them)"
    if spec.sync is not None:
        return (f"{address} would be a real server of another address family in service {svc.name!r}; the cluster "
                "runs a connection sync daemon (sync:), which the kernel runs beside no such real server")
    return None


def stranded(spec: ClusterSpec, members: Iterable[JoinedMember]) -> list[str]:
    """Why each joined member that ``with_members`` leaves out for its address family is left out.

    A member joined when the file allowed it; a reload (``sync:`` added, forwarding changed) may
    no longer. The director says so once per reload rather than letting the kernel refuse it.
    """
    static = static_addresses(spec)
    services = {svc.name: svc for svc in spec.services}
    return [why for jm in members if jm.member.address not in static
            for name in jm.member.services if name in services
            for why in [family_mismatch(spec, services[name], jm.member.address)] if why]


def _port(svc: ServiceSpec, member: Member) -> int:
    """The member's port in ``svc``: its own when given, else the service's (0 keeps fwmark ports)."""
    given = member.port_for(svc.name)
    if given is not None:
        return given
    return svc.port if svc.port is not None else 0


def with_members(spec: ClusterSpec, members: Iterable[JoinedMember]) -> ClusterSpec:
    """The file's spec with every joined member added as a real server of its services.

    A member takes its service's forwarding method; a drained member has weight 0 (no new
    connections, established ones continue). A member whose service is gone, whose address
    the file now lists itself (a reload after registration), or whose address family the
    service can no longer carry (``stranded``), is left out: the file wins.
    """
    members = sorted(members, key=lambda m: ipaddress.ip_address(m.member.address).packed)
    if not members:
        return spec
    static = static_addresses(spec)
    services = []
    for svc in spec.services:
        extra = []
        names = {rs.name for rs in svc.realservers if rs.name}
        for jm in members:
            m = jm.member
            if svc.name not in m.services or m.address in static or family_mismatch(spec, svc, m.address):
                continue
            name = m.name if m.name and m.name not in names else None
            if name:
                names.add(name)
            extra.append(RealServerSpec(address=m.address, port=_port(svc, m), weight=0 if jm.drained else m.weight,
                                        forwarding=svc.forwarding, name=name))
        services.append(replace(svc, realservers=svc.realservers + tuple(extra)) if extra else svc)
    return replace(spec, services=tuple(services))


class MemberStore:
    """Joined members, persisted as JSON in one file replaced atomically on every change."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.members: dict[str, JoinedMember] = {}

    def load(self) -> None:
        """Read the file; a missing file is an empty membership, a corrupt one is set aside and logged."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [JoinedMember.from_json(item) for item in data["members"]]
        except FileNotFoundError:
            self.members = {}
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + f".unreadable-{int(time.time())}")
            log.error("registration: cannot read members from %s (%s); kept as %s, starting with none",
                      self.path, exc, aside)
            try:
                os.replace(self.path, aside)
            except OSError as err:
                log.error("registration: cannot set %s aside: %s", self.path, err)
            self.members = {}
            return
        self.members = {jm.member.address: jm for jm in entries}

    def put(self, jm: JoinedMember) -> None:
        """Add or replace a member; the file is written before memory changes (OSError: nothing changed)."""
        self._commit({**self.members, jm.member.address: jm})

    def remove(self, address: str) -> None:
        """Forget a member; the file is written before memory changes."""
        self._commit({a: jm for a, jm in self.members.items() if a != address})

    def _commit(self, members: dict[str, JoinedMember]) -> None:
        data = {"members": [members[a].to_json() for a in sorted(members)]}
        # fsync: the rename must not expose an empty file after a crash
        write_json(self.path, data, indent=1, sort_keys=True, fsync=True)
        self.members = members
