"""The VRRPv3 state machine (RFC 5798 §6.4), pure: (state, event, now) -> (new state, actions).

No I/O and no clock reads: the runtime feeds events (start, stop, a received
advert, a timer tick, a tracking change, a resource failure) with the current
monotonic time, performs the returned actions in order, and wakes up again at
:func:`next_deadline`. Timers are deadlines kept in the state, so a test moves
time by passing a different ``now``.

Beyond RFC 5798 the machine has a Fault state (as keepalived does): a tracked
interface or service is down, or taking the resources failed. A master that
enters Fault first advertises priority 0, so its backup takes over after the
skew time instead of the whole master-down interval (RFC 5798 §6.4.3).

``preempt_delay`` (keepalived's word) lets a lower-priority master keep the
address for that many seconds after this backup first saw it, so a director
that just booted does not grab the VIPs before its own checks have settled.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import StrEnum


class Role(StrEnum):
    """RFC 5798 states, plus Fault."""

    # str() and format() of a member give its value ("master"); logs, status, events and notify
    # arguments write ``.value`` all the same, so the text they carry does not depend on it.

    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"
    FAULT = "fault"


@dataclass(frozen=True)
class VrrpParams:
    """What one instance is configured with (the FSM's constants)."""

    vrid: int
    priority: int  # configured, 1..255; 255 = the address owner
    advert_interval: int  # centiseconds
    primary: str  # our primary address on the interface: the source of our adverts, the tie-breaker
    preempt: bool = True
    preempt_delay: float = 0.0  # seconds


@dataclass(frozen=True)
class VrrpState:
    """Where one instance stands; deadlines are monotonic seconds."""

    role: Role = Role.INIT
    priority: int = 0  # effective: configured minus tracking penalties
    master_adver_int: int = 100  # centiseconds, learnt from the master while backup (RFC 5798 §6.4.2)
    master: str | None = None  # address of the current master, ours when master
    since: float = 0.0
    transitions: int = 0
    advert_at: float | None = None
    master_down_at: float | None = None
    preempt_at: float | None = None
    penalty: int = 0
    track_faults: frozenset[str] = frozenset()
    resource_fault: str | None = None

    @property
    def faults(self) -> tuple[str, ...]:
        """Every reason the instance must not be master, sorted."""
        return tuple(sorted(self.track_faults)) + ((self.resource_fault,) if self.resource_fault else ())


# -- events --------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """The instance starts (RFC 5798 §6.4.1 Startup)."""


@dataclass(frozen=True)
class Stop:
    """The instance shuts down (RFC 5798 §6.4.3 Shutdown: a master sends priority 0)."""


@dataclass(frozen=True)
class Tick:
    """Time passed; deadlines at or before ``now`` fire."""


@dataclass(frozen=True)
class Advert:
    """An advert arrived (already checksum- and version-checked by the receiver)."""

    source: str
    priority: int
    interval: int  # centiseconds
    vrid: int
    ttl: int = 255


@dataclass(frozen=True)
class Track:
    """Tracked interfaces and services were re-evaluated."""

    penalty: int = 0  # sum of the weights of failed weighted tracks
    faults: frozenset[str] = frozenset()  # failed tracks without weight: each forces Fault


@dataclass(frozen=True)
class ResourceFault:
    """Taking the resources failed (``reason``), or a previous failure is cleared (None)."""

    reason: str | None


# -- actions -------------------------------------------------------------------

@dataclass(frozen=True)
class SendAdvert:
    """Send one advert with this priority."""

    priority: int


@dataclass(frozen=True)
class TakeResources:
    """Acquire the instance's resource group (VIPs, sync role, commands) in order."""


@dataclass(frozen=True)
class ReleaseResources:
    """Release the resource group in reverse order."""


@dataclass(frozen=True)
class RunNotify:
    """Run the notify hook for the new role."""

    role: Role
    priority: int


@dataclass(frozen=True)
class Announce:
    """Announce the addresses again (gratuitous ARP / unsolicited NA) while staying master.

    After a split brain heals, the hosts on the link may still send to the other
    master's MAC address, which it learnt while both claimed the addresses; the
    other master now stands down without announcing anything. keepalived does the
    same on a lower-priority advert (``garp_lower_prio_repeat``).
    """

    reason: str


@dataclass(frozen=True)
class Discard:
    """An advert was ignored; ``reason`` is for the debug log."""

    reason: str


Event = Start | Stop | Tick | Advert | Track | ResourceFault
Action = SendAdvert | TakeResources | ReleaseResources | RunNotify | Announce | Discard


# -- timing (RFC 5798 §6.1) ------------------------------------------------------

def skew_time(priority: int, master_adver_int: int) -> float:
    """Skew_Time in seconds: ((256 - Priority) * Master_Adver_Interval) / 256 centiseconds."""
    return (256 - priority) * master_adver_int / 256 / 100


def master_down_interval(priority: int, master_adver_int: int) -> float:
    """Master_Down_Interval in seconds: 3 * Master_Adver_Interval + Skew_Time."""
    return 3 * master_adver_int / 100 + skew_time(priority, master_adver_int)


def effective_priority(configured: int, penalty: int) -> int:
    """Configured priority lowered by tracking; a penalised owner is no longer 255, and never below 1."""
    if penalty <= 0:
        return configured
    return max(1, min(254, configured - penalty))


def next_deadline(st: VrrpState) -> float | None:
    """When the runtime must next deliver a Tick (None: only on an event)."""
    if st.role is Role.MASTER:
        return st.advert_at
    if st.role is Role.BACKUP:
        return st.master_down_at
    return None


def initial(params: VrrpParams, now: float = 0.0) -> VrrpState:
    """The Initialize state of a configured instance."""
    return VrrpState(priority=params.priority, master_adver_int=params.advert_interval, since=now)


# -- the machine -----------------------------------------------------------------

def step(params: VrrpParams, st: VrrpState, event: Event, now: float) -> tuple[VrrpState, list[Action]]:
    """Apply one event at time ``now``; return the new state and the actions to perform in order."""
    if isinstance(event, Start):
        if st.role is not Role.INIT:
            return st, []
        return _settle(params, st, now)
    if isinstance(event, Stop):
        actions: list[Action] = []
        if st.role is Role.MASTER:
            actions = [SendAdvert(0), ReleaseResources()]
        return _enter(st, Role.INIT, now, master=None), actions
    if isinstance(event, Tick):
        return _tick(params, st, now)
    if isinstance(event, Advert):
        return _advert(params, st, event, now)
    if isinstance(event, Track):
        st = replace(st, penalty=event.penalty, track_faults=frozenset(event.faults))
        return _reevaluate(params, st, now)
    if isinstance(event, ResourceFault):
        return _reevaluate(params, replace(st, resource_fault=event.reason), now)
    raise TypeError(f"not a VRRP event: {event!r}")


def _enter(st: VrrpState, role: Role, now: float, **changes) -> VrrpState:
    """A new role, counting the transition and clearing the timers of the old one."""
    counted = st.transitions + (1 if role is not st.role and role is not Role.INIT else 0)
    return replace(st, role=role, since=now, transitions=counted, advert_at=None, master_down_at=None,
                   preempt_at=None, **changes)


def _become_master(params: VrrpParams, st: VrrpState, now: float) -> tuple[VrrpState, list[Action]]:
    """RFC 5798 §6.4.1/§6.4.2: send an advert, announce the addresses, start the Adver_Timer."""
    st = _enter(st, Role.MASTER, now, master=params.primary)
    st = replace(st, advert_at=now + params.advert_interval / 100)
    return st, [SendAdvert(st.priority), TakeResources(), RunNotify(Role.MASTER, st.priority)]


def _become_backup(params: VrrpParams, st: VrrpState, now: float, interval: int,
                   master: str | None) -> VrrpState:
    """Backup with a Master_Down_Timer computed from the master's advert interval."""
    st = _enter(st, Role.BACKUP, now, master=master, master_adver_int=interval)
    return replace(st, master_down_at=now + master_down_interval(st.priority, interval))


def _settle(params: VrrpParams, st: VrrpState, now: float) -> tuple[VrrpState, list[Action]]:
    """From Initialize or Fault: Fault while faulted, else master if owner, else backup (§6.4.1)."""
    st = replace(st, priority=effective_priority(params.priority, st.penalty))
    if st.faults:
        if st.role is Role.FAULT:
            return st, []
        return _enter(st, Role.FAULT, now, master=None), [RunNotify(Role.FAULT, st.priority)]
    if st.priority == 255:
        return _become_master(params, st, now)
    st = _become_backup(params, st, now, params.advert_interval, None)
    return st, [RunNotify(Role.BACKUP, st.priority)]


def _tick(params: VrrpParams, st: VrrpState, now: float) -> tuple[VrrpState, list[Action]]:
    """Adver_Timer (master) or Master_Down_Timer (backup) expiry."""
    if st.role is Role.MASTER and st.advert_at is not None and now >= st.advert_at:
        return replace(st, advert_at=now + params.advert_interval / 100), [SendAdvert(st.priority)]
    if st.role is Role.BACKUP and st.master_down_at is not None and now >= st.master_down_at:
        return _become_master(params, st, now)
    return st, []


def _advert(params: VrrpParams, st: VrrpState, adv: Advert, now: float) -> tuple[VrrpState, list[Action]]:
    """RFC 5798 §6.4.2 (Backup) and §6.4.3 (Master) on receiving an ADVERTISEMENT."""
    if adv.vrid != params.vrid:
        return st, [Discard(f"VRID {adv.vrid} is not ours ({params.vrid})")]
    if adv.ttl != 255:
        # §7.1: a TTL below 255 means the packet crossed a router — not from our link.
        return st, [Discard(f"TTL {adv.ttl} from {adv.source}, expected 255")]
    if adv.source == params.primary:
        return st, [Discard("our own advert")]
    if st.role is Role.BACKUP:
        if adv.priority == 0:
            # The master is leaving: take over after Skew_Time only.
            return replace(st, master_down_at=now + skew_time(st.priority, st.master_adver_int)), []
        lower = adv.priority < st.priority
        if lower and params.preempt:
            if params.preempt_delay <= 0:
                return st, [Discard(f"priority {adv.priority} from {adv.source} below ours ({st.priority}): "
                                    "preempting")]
            preempt_at = st.preempt_at if st.preempt_at is not None else now + params.preempt_delay
            if now >= preempt_at:
                return replace(st, preempt_at=preempt_at), [Discard(
                    f"priority {adv.priority} from {adv.source} below ours ({st.priority}): preempt delay over")]
            st = replace(st, preempt_at=preempt_at)
        elif st.preempt_at is not None:
            st = replace(st, preempt_at=None)
        return replace(st, master=adv.source, master_adver_int=adv.interval,
                       master_down_at=now + master_down_interval(st.priority, adv.interval)), []
    if st.role is Role.MASTER:
        if adv.priority == 0:
            # Another router gave up the address we hold: assert ourselves at once.
            return replace(st, advert_at=now + params.advert_interval / 100), [SendAdvert(st.priority)]
        if adv.priority > st.priority or (adv.priority == st.priority and _greater(adv.source, params.primary)):
            # Two masters: a split brain is healing. One last advert before standing down (§6.4.3 asks
            # for none) is how the winner learns of it and announces the addresses again (Announce):
            # the hosts on the link may be sending to our MAC address. RFC 5798 routers take it for an
            # ordinary advert from a lower-priority master; the winner's next advert follows.
            last = SendAdvert(st.priority)
            st = _become_backup(params, st, now, adv.interval, adv.source)
            return st, [last, ReleaseResources(), RunNotify(Role.BACKUP, st.priority)]
        return st, [Announce(f"another master, {adv.source}, advertised priority {adv.priority} (ours "
                             f"{st.priority}) and gives way: a split brain healing")]
    return st, [Discard(f"in {st.role.value}")]


def _greater(a: str, b: str) -> bool:
    """Whether address ``a`` is greater than ``b`` as unsigned integers in network order (§6.4.3)."""
    try:
        return int(ipaddress.ip_address(a)) > int(ipaddress.ip_address(b))
    except ValueError:
        return False


def _reevaluate(params: VrrpParams, st: VrrpState, now: float) -> tuple[VrrpState, list[Action]]:
    """After a tracking change or resource failure: enter or leave Fault, advertise a new priority."""
    old = st.priority
    st = replace(st, priority=effective_priority(params.priority, st.penalty))
    if st.role is Role.INIT:
        return st, []
    if st.role is Role.FAULT:
        return _settle(params, st, now) if not st.faults else (st, [])
    if st.faults:
        actions: list[Action] = []
        if st.role is Role.MASTER:
            actions = [SendAdvert(0), ReleaseResources()]
        st = _enter(st, Role.FAULT, now, master=None)
        return st, actions + [RunNotify(Role.FAULT, st.priority)]
    if st.role is Role.MASTER and st.priority != old:
        # Tell the backup now, so a preempting peer need not wait for the next advert.
        return replace(st, advert_at=now + params.advert_interval / 100), [SendAdvert(st.priority)]
    if st.role is Role.BACKUP and st.priority == 255:
        return _become_master(params, st, now)
    return st, []
