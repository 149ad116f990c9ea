"""The chaos run's fault schedule: seeded, bounded in count and time, and pure (no I/O, no clock).

The same seed, duration and cluster always give the same list of faults. Kinds
come in rounds: each round is a seeded permutation of every kind, so a run long
enough for one round exercises each fault once before any repeats. Faults run
one after another — each is injected, held, healed, and the cluster must have
recovered before the next starts — so every recovery time belongs to exactly
one fault.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Every kind of fault, in the issue's words.
KINDS = {
    "smtp_stop": "stop a real server's SMTP service (postfix stop), restart it",
    "imap_stop": "stop a real server's IMAP service (Dovecot), restart it",
    "rs_kill": "kill a real server outright (SIGKILL of every daemon, its link down), boot it again",
    "rs_hang": "hang a real server's SMTP: SIGSTOP of every Postfix process (the kernel still accepts, "
               "nobody greets), SIGCONT",
    "queue_full": "fill a real server's queue: deliveries deferred, messages sent straight to it held in its "
                  "queue, free-space floor raised (452 4.3.1), then the queue flushed",
    "director_kill": "SIGKILL the master director (VIP and kernel state stay behind), restart it (failback)",
    "director_link": "take the master director's links down, bring them up (failback)",
    "director_split": "split the directors' link (VRRP adverts dropped both ways: split brain), heal it",
    "reload": "reload both directors with a changed cluster file (a real server's weight 1 -> 3), and back",
    "join_leave": "join a new real server through the registration API, later drain it and leave",
}
DIRECTOR_KINDS = ("director_kill", "director_link", "director_split")
REALSERVER_KINDS = ("smtp_stop", "imap_stop", "rs_kill", "rs_hang", "queue_full")
#: Seconds of quiet before the first fault (the clients warm up) and planned between faults.
WARMUP, GAP = 8.0, 6.0
#: How long a fault is held, by kind (seconds, drawn uniformly); directors need longer under emulation.
HOLD = {"director_kill": (10.0, 15.0), "director_link": (10.0, 15.0), "director_split": (8.0, 12.0),
        "join_leave": (10.0, 15.0)}
DEFAULT_HOLD = (6.0, 12.0)
MAX_FAULTS = 50


@dataclass(frozen=True)
class FaultSpec:
    """One planned fault: when (seconds after the start, at the earliest), what, on what, for how long."""

    index: int
    kind: str
    target: str  # rs1 ... for real-server kinds, "master" for director kinds, the spare for join_leave
    at: float
    hold: float

    @property
    def description(self) -> str:
        """What the fault does, in words."""
        return KINDS[self.kind]


def make_schedule(seed: int, duration: float, reals: list[str], spare: str | None = None,
                  kinds: tuple[str, ...] | None = None) -> list[FaultSpec]:
    """The faults for ``duration`` seconds: planned start times, targets and hold times, all from ``seed``."""
    if duration <= 0:
        raise ValueError("duration must be positive")
    if not reals:
        raise ValueError("a schedule needs at least one real server")
    rng = random.Random(seed)
    usable = [k for k in (kinds or tuple(KINDS)) if k != "join_leave" or spare]
    unknown = [k for k in usable if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(unknown)}")
    faults: list[FaultSpec] = []
    t = WARMUP
    pool: list[str] = []
    while len(faults) < MAX_FAULTS:
        if not pool:
            pool = rng.sample(usable, len(usable))
        kind = pool.pop(0)
        low, high = HOLD.get(kind, DEFAULT_HOLD)
        hold = round(rng.uniform(low, high), 1)
        if t + hold > duration:
            break
        if kind in DIRECTOR_KINDS:
            target = "master"
        elif kind == "join_leave":
            target = spare or ""
        elif kind == "reload":
            target = rng.choice(reals)
        else:
            target = rng.choice(reals)
        faults.append(FaultSpec(len(faults) + 1, kind, target, round(t, 1), hold))
        t += hold + GAP
    return faults
