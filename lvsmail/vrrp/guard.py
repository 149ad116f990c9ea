"""What a VRRP receiver lets through to the state machine, and what it counts and logs of the rest.

Anyone on the VRRP link can send adverts, as fast as the link allows. RFC 5798
section 7.1 lists the checks a receiver makes, each a discard: TTL / hop limit
255, version 3, a whole packet, the checksum, a VRID configured here (then
lvsmail's authentication trailer, when a key is set). They run first, in that
order, cheapest first, and cost a few microseconds a packet; nothing they drop
is queued, stepped or logged on its own.

What passes them still costs a step of the state machine each, and a host
without the key can send valid adverts. So each source has a token bucket:
``RATE_FACTOR`` times the adverts a master on our interval sends, ``BURST``
at once. Sources other than the current master also share one bucket of
``SHARED_FACTOR`` times that rate, so a flood from many (spoofed) addresses is
bounded too, and the master's own adverts never wait behind it. (A host that
can send with the master's address and no key is set can always take the
virtual router over: RFC 5798 section 9. With a key, forged adverts are dropped
at the authentication check, before they cost the master's bucket anything.)

Drops are counted by reason; one summary line per ``LOG_EVERY`` seconds (and
one when the socket closes) reports them, so a flood cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("lvsmail.vrrp")

#: Adverts a second allowed from one source, as a multiple of what a master on our interval sends.
RATE_FACTOR = 4
#: Adverts a source may send at once above its rate (a restarting peer's first adverts, a priority 0).
BURST = 10
#: Adverts a second all sources but the master may send together, as a multiple of a master's rate.
SHARED_FACTOR = 8
#: Fewest adverts a second a source is allowed, however long the interval (a shutdown's priority 0,
#: a split brain's last advert and a reload's new priority come between regular adverts).
RATE_FLOOR = 2.0
#: Sources with a bucket at once; beyond, the one heard from longest ago is forgotten.
MAX_SOURCES = 256
#: Seconds between two summary lines of what was dropped.
LOG_EVERY = 60.0
#: Drop reasons, in the order RFC 5798 section 7.1 checks them, then the rate limits.
REASONS = ("malformed", "ttl", "not-a-peer", "vrid", "auth", "rate", "shared-rate")


class _Bucket:
    """A token bucket (tokens refill at ``rate`` a second up to ``burst``)."""

    __slots__ = ("tokens", "at")

    def __init__(self, burst: float, now: float):
        self.tokens = burst
        self.at = now

    def take(self, rate: float, burst: float, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ReceiveGuard:
    """Counts the adverts of one VRRP receiver by outcome, rate-limits what passes, logs a summary."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic, log_every: float = LOG_EVERY):
        self.name = name
        self.clock = clock
        self.log_every = log_every
        self.dropped: Counter[str] = Counter()  # since the socket was opened, by reason
        self.passed = 0  # adverts let through to the state machine
        self._unlogged: Counter[str] = Counter()  # drops not yet in a summary line
        self._loudest: Counter[str] = Counter()  # their sources
        self._logged_at: float | None = None
        self._buckets: dict[str, _Bucket] = {}
        self._shared: _Bucket | None = None

    def drop(self, reason: str, source: str) -> None:
        """Count one dropped packet; a summary line when the last one is ``log_every`` old."""
        self.dropped[reason] += 1
        self._unlogged[reason] += 1
        if len(self._loudest) < MAX_SOURCES or source in self._loudest:
            self._loudest[source] += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= self.log_every:
            self.flush(now)

    def admit(self, source: str, master: str | None, interval_cs: int, master_interval_cs: int | None = None) -> bool:
        """Whether an advert from ``source`` that passed every check may reach the state machine.

        ``master`` is the current master's address (exempt from the shared bucket), ``interval_cs``
        our advert interval in centiseconds (the rates follow from it); the master's own bucket follows
        its advertised interval when that is shorter (RFC 5798 lets a backup adopt the master's).
        """
        now = self.clock()
        if source == master and master_interval_cs:
            interval_cs = min(interval_cs, master_interval_cs)
        rate = max(RATE_FLOOR, RATE_FACTOR * 100.0 / max(1, interval_cs))
        bucket = self._buckets.pop(source, None)  # re-inserted last: the dict stays oldest first
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                del self._buckets[next(iter(self._buckets))]
            bucket = _Bucket(BURST, now)
        self._buckets[source] = bucket
        if not bucket.take(rate, BURST, now):
            self.drop("rate", source)
            return False
        if source != master:
            shared_rate = rate * SHARED_FACTOR / RATE_FACTOR
            if self._shared is None:
                self._shared = _Bucket(BURST * 2, now)
            if not self._shared.take(shared_rate, BURST * 2, now):
                self.drop("shared-rate", source)
                return False
        self.passed += 1
        return True

    def flush(self, now: float | None = None) -> None:
        """Log what was dropped since the last summary line (nothing when nothing was)."""
        self._logged_at = self.clock() if now is None else now
        if not self._unlogged:
            return
        total = sum(self._unlogged.values())
        reasons = ", ".join(f"{r} {self._unlogged[r]}" for r in REASONS if self._unlogged[r])
        top = ", ".join(f"{s} ({n})" for s, n in self._loudest.most_common(3))
        log.warning("vrrp %s: dropped %d packets (%s) from %s; %d adverts let through so far, %d dropped so far",
                    self.name, total, reasons, top, self.passed, sum(self.dropped.values()))
        self._unlogged.clear()
        self._loudest.clear()
