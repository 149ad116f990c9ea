"""The VRRPv3 state machine, row by row: (state, event, now) -> (role, actions), with a fake clock."""

from dataclasses import replace

import pytest

from lvsmail.vrrp.state import (
    Advert,
    ReleaseResources,
    ResourceFault,
    Role,
    RunNotify,
    SendAdvert,
    Start,
    Stop,
    TakeResources,
    Tick,
    Track,
    VrrpParams,
    initial,
    master_down_interval,
    next_deadline,
    skew_time,
    step,
)

ME, PEER_LOW, PEER_HIGH = "192.0.2.10", "192.0.2.5", "192.0.2.20"
P = VrrpParams(vrid=51, priority=100, advert_interval=100, primary=ME)


def backup(params=P, now=0.0, **kw):
    st, _ = step(params, initial(params), Start(), now)
    assert st.role is Role.BACKUP
    return replace(st, **kw)


def master(params=P, now=0.0):
    st = backup(params, now)
    st, actions = step(params, st, Tick(), next_deadline(st))
    assert st.role is Role.MASTER
    return st


def kinds(actions):
    return [type(a).__name__ for a in actions]


def test_timing_follows_rfc_5798_section_6_1():
    # priority 100, 1 s adverts: skew = (256-100)*100/256 cs = 0.609 s, down = 3 s + skew
    assert skew_time(100, 100) == pytest.approx(0.609375)
    assert master_down_interval(100, 100) == pytest.approx(3.609375)
    assert master_down_interval(254, 3) == pytest.approx(0.09 + 2 * 3 / 256 / 100)


def test_startup_backup_then_master_after_master_down_interval():
    st, actions = step(P, initial(P), Start(), 10.0)
    assert st.role is Role.BACKUP and actions == [RunNotify(Role.BACKUP, 100)]
    assert next_deadline(st) == pytest.approx(10.0 + 3.609375)
    st2, actions = step(P, st, Tick(), 13.6)  # one tick early: nothing
    assert st2 is st and actions == []
    st, actions = step(P, st, Tick(), 13.61)
    assert st.role is Role.MASTER and st.master == ME and st.transitions == 2
    assert actions == [SendAdvert(100), TakeResources(), RunNotify(Role.MASTER, 100)]
    assert next_deadline(st) == pytest.approx(14.61)


def test_owner_priority_255_is_master_at_once():
    owner = replace(P, priority=255)
    st, actions = step(owner, initial(owner), Start(), 0.0)
    assert st.role is Role.MASTER and kinds(actions) == ["SendAdvert", "TakeResources", "RunNotify"]


def test_master_sends_adverts_on_its_interval():
    st = master()
    t = next_deadline(st)
    st, actions = step(P, st, Tick(), t)
    assert actions == [SendAdvert(100)] and next_deadline(st) == pytest.approx(t + 1.0)


# -- adverts received: one named row per situation ---------------------------------

ROWS = [
    # name, params, start role, advert, expected role, expected action kinds
    ("backup: higher-priority master resets the timer", P, "backup",
     Advert(PEER_HIGH, 200, 100, 51), Role.BACKUP, []),
    ("backup: lower-priority master, preempt on: discarded so we take over", P, "backup",
     Advert(PEER_LOW, 50, 100, 51), Role.BACKUP, ["Discard"]),
    ("backup: lower-priority master, preempt off: accepted", replace(P, preempt=False), "backup",
     Advert(PEER_LOW, 50, 100, 51), Role.BACKUP, []),
    ("backup: equal priority: accepted (the tie is decided by the master)", P, "backup",
     Advert(PEER_LOW, 100, 100, 51), Role.BACKUP, []),
    ("master: higher-priority peer takes over (one last advert tells it we were master too)", P, "master",
     Advert(PEER_HIGH, 200, 100, 51), Role.BACKUP, ["SendAdvert", "ReleaseResources", "RunNotify"]),
    ("master: another master with lower priority gives way: announce our addresses again", P, "master",
     Advert(PEER_HIGH, 50, 100, 51), Role.MASTER, ["Announce"]),
    ("master: equal priority, higher primary address wins", P, "master",
     Advert(PEER_HIGH, 100, 100, 51), Role.BACKUP, ["SendAdvert", "ReleaseResources", "RunNotify"]),
    ("master: equal priority, lower primary address loses: announce again", P, "master",
     Advert(PEER_LOW, 100, 100, 51), Role.MASTER, ["Announce"]),
    ("master: priority 0 from a leaving router: assert at once", P, "master",
     Advert(PEER_LOW, 0, 100, 51), Role.MASTER, ["SendAdvert"]),
    ("wrong VRID is discarded", P, "master",
     Advert(PEER_HIGH, 255, 100, 52), Role.MASTER, ["Discard"]),
    ("TTL not 255 is discarded (crossed a router, RFC 5798 §7.1)", P, "master",
     Advert(PEER_HIGH, 255, 100, 51, ttl=254), Role.MASTER, ["Discard"]),
    ("our own looped advert is discarded", P, "backup",
     Advert(ME, 200, 100, 51), Role.BACKUP, ["Discard"]),
]


@pytest.mark.parametrize("name, params, start, adv, role, expected", ROWS, ids=[r[0] for r in ROWS])
def test_advert_rows(name, params, start, adv, role, expected):
    st = backup(params) if start == "backup" else master(params)
    new, actions = step(params, st, adv, 1.0)
    assert new.role is role
    assert kinds(actions) == expected


def test_backup_adopts_the_masters_advert_interval():
    st, _ = step(P, backup(), Advert(PEER_HIGH, 200, 10, 51), 5.0)
    assert st.master_adver_int == 10 and st.master == PEER_HIGH
    assert next_deadline(st) == pytest.approx(5.0 + master_down_interval(100, 10))


def test_priority_0_received_backup_takes_over_after_skew_time():
    st = backup()
    st, _ = step(P, st, Advert(PEER_HIGH, 200, 100, 51), 1.0)
    st, actions = step(P, st, Advert(PEER_HIGH, 0, 100, 51), 2.0)
    assert actions == [] and next_deadline(st) == pytest.approx(2.0 + skew_time(100, 100))
    st, actions = step(P, st, Tick(), 2.0 + skew_time(100, 100))
    assert st.role is Role.MASTER and TakeResources() in actions


def test_graceful_shutdown_of_master_sends_priority_0_and_releases():
    st, actions = step(P, master(), Stop(), 9.0)
    assert st.role is Role.INIT and actions == [SendAdvert(0), ReleaseResources()]


def test_preempt_delay_tolerates_a_lower_master_for_the_delay():
    params = replace(P, preempt_delay=5.0)
    st = backup(params)
    low = Advert(PEER_LOW, 50, 100, 51)
    st, actions = step(params, st, low, 1.0)  # first seen: tolerated, timer reset
    assert actions == [] and st.preempt_at == 6.0
    st, actions = step(params, st, low, 5.9)
    assert actions == [] and next_deadline(st) == pytest.approx(5.9 + master_down_interval(100, 100))
    st, actions = step(params, st, low, 6.0)  # delay over: discarded, the down timer runs out
    assert kinds(actions) == ["Discard"]
    st, actions = step(params, st, Tick(), next_deadline(st))
    assert st.role is Role.MASTER


def test_split_brain_heals_to_exactly_one_master():
    a_params, b_params = replace(P, primary="192.0.2.1"), replace(P, primary="192.0.2.2", priority=100)
    a, b = master(a_params), master(b_params)  # both masters while the link was cut
    a, _ = step(a_params, a, Advert("192.0.2.2", b.priority, 100, 51), 20.0)
    b, _ = step(b_params, b, Advert("192.0.2.1", a.priority, 100, 51), 20.0)
    assert sorted([a.role.value, b.role.value]) == ["backup", "master"]
    assert b.role is Role.MASTER  # equal priority: the higher primary address wins


def test_tracking_weight_lowers_priority_and_master_advertises_at_once():
    st, actions = step(P, master(), Track(penalty=60), 3.0)
    assert st.role is Role.MASTER and st.priority == 40 and actions == [SendAdvert(40)]
    # now a peer at 50 beats us
    st, actions = step(P, st, Advert(PEER_LOW, 50, 100, 51), 3.5)
    assert st.role is Role.BACKUP
    st, _ = step(P, st, Track(penalty=0), 4.0)
    assert st.priority == 100


def test_tracking_penalty_never_reaches_0_or_leaves_an_owner_at_255():
    owner = replace(P, priority=255)
    st, _ = step(owner, initial(owner), Start(), 0.0)
    st, actions = step(owner, st, Track(penalty=1), 1.0)
    assert st.priority == 254 and actions == [SendAdvert(254)]
    st, _ = step(owner, st, Track(penalty=1000), 2.0)
    assert st.priority == 1


def test_tracking_fault_from_master_gives_way_with_priority_0_and_recovers_as_backup():
    st, actions = step(P, master(), Track(faults=frozenset({"interface eth1 down"})), 3.0)
    assert st.role is Role.FAULT
    assert actions == [SendAdvert(0), ReleaseResources(), RunNotify(Role.FAULT, 100)]
    assert next_deadline(st) is None
    st, actions = step(P, st, Advert(PEER_LOW, 50, 100, 51), 3.5)
    assert st.role is Role.FAULT and kinds(actions) == ["Discard"]
    st, actions = step(P, st, Track(), 4.0)
    assert st.role is Role.BACKUP and actions == [RunNotify(Role.BACKUP, 100)]


def test_fault_at_startup_and_resource_failure_fault():
    st = replace(initial(P), track_faults=frozenset({"service smtp down"}))
    st, actions = step(P, st, Start(), 0.0)
    assert st.role is Role.FAULT and actions == [RunNotify(Role.FAULT, 100)]
    st, actions = step(P, master(), ResourceFault("vip 192.0.2.33: EPERM"), 5.0)
    assert st.role is Role.FAULT and st.faults == ("vip 192.0.2.33: EPERM",)
    assert kinds(actions) == ["SendAdvert", "ReleaseResources", "RunNotify"]
    st, _ = step(P, st, ResourceFault(None), 35.0)
    assert st.role is Role.BACKUP


def test_backup_fault_does_not_release_what_it_does_not_hold():
    st, actions = step(P, backup(), Track(faults=frozenset({"x"})), 1.0)
    assert st.role is Role.FAULT and actions == [RunNotify(Role.FAULT, 100)]


def test_priority_raised_to_255_in_backup_takes_over():
    owner = replace(P, priority=255)
    st, _ = step(owner, initial(owner), Start(), 0.0)
    st, _ = step(owner, st, Track(penalty=10), 1.0)
    st, _ = step(owner, st, Advert(PEER_HIGH, 250, 100, 51), 1.1)
    assert st.role is Role.BACKUP
    st, actions = step(owner, st, Track(penalty=0), 2.0)
    assert st.role is Role.MASTER and TakeResources() in actions


def test_transitions_are_counted_and_since_is_kept():
    st = master(now=0.0)
    assert st.transitions == 2 and st.since == pytest.approx(master_down_interval(100, 100))
    st, _ = step(P, st, Stop(), 50.0)
    assert st.role is Role.INIT and st.transitions == 2 and st.master is None


def test_unknown_event_is_a_type_error():
    with pytest.raises(TypeError):
        step(P, initial(P), object(), 0.0)
