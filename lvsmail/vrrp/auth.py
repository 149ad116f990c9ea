"""Optional authentication of lvsmail-to-lvsmail VRRP adverts (an lvsmail extension).

VRRPv3 has no authentication (RFC 5798 §9 removed VRRPv2's, judging a TTL of
255 enough against off-link senders). On a shared segment anyone on the link
can still send adverts with priority 255 and take the VIPs, so lvsmail can
append a trailer after the address list::

    "LVA1" | counter (u64, nanoseconds since the epoch at sending) | HMAC-SHA256 (32 bytes)

The tag covers the advert with a zero checksum plus the magic and counter, so
a changed priority, interval or address list is refused. The counter must grow
per sender (no replay of an old advert) and lie within ``window`` seconds of
the receiver's clock (directors run NTP). A packet with a trailer is not a
plain VRRPv3 packet: keepalived drops it, so with a key configured only lvsmail
peers can be in the virtual router.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time

from lvsmail.secretfile import SecretFileError, read_secret_file
from lvsmail.vrrp.packet import Advertisement, body

MAGIC = b"LVA1"
TRAILER_LEN = len(MAGIC) + 8 + 32
#: Largest accepted distance between a sender's counter and our clock, seconds.
DEFAULT_WINDOW = 30.0
_MAX_KEY_BYTES = 4096


class AuthError(ValueError):
    """An advert is unauthenticated, forged or replayed; or a key file is unusable."""


def load_key(path: str, *, owner_uid: int = 0) -> bytes:
    """The shared secret from a file owned by root with no group/other access (like an ssh key)."""
    try:
        data = read_secret_file(path, "VRRP key file", owner_uid=owner_uid, max_bytes=_MAX_KEY_BYTES)
    except SecretFileError as exc:
        raise AuthError(str(exc)) from None
    key = data.strip()
    if len(key) < 16:
        raise AuthError(f"{path}: the key must be at least 16 bytes")
    return key


def _tag(key: bytes, adv: Advertisement, counter: int) -> bytes:
    """HMAC-SHA256 over the advert (checksum zero, no trailer), magic and counter."""
    return hmac.new(key, body(adv) + MAGIC + struct.pack("!Q", counter), hashlib.sha256).digest()


def sign(key: bytes, adv: Advertisement, counter: int | None = None) -> Advertisement:
    """The advert with an authentication trailer appended."""
    counter = time.time_ns() if counter is None else counter
    return Advertisement(adv.vrid, adv.priority, adv.max_adver_int, adv.addresses, adv.family,
                         MAGIC + struct.pack("!Q", counter) + _tag(key, adv, counter))


class Verifier:
    """Checks trailers and remembers the last counter per sender, refusing replays."""

    def __init__(self, key: bytes, *, window: float = DEFAULT_WINDOW, wall=time.time_ns) -> None:
        self.key = key
        self.window_ns = int(window * 1e9)
        self.wall = wall
        self.last: dict[str, int] = {}

    def verify(self, source: str, adv: Advertisement) -> None:
        """Raise AuthError unless the advert carries a fresh, valid tag from ``source``."""
        t = adv.trailer
        if len(t) != TRAILER_LEN or not t.startswith(MAGIC):
            raise AuthError("no lvsmail authentication trailer (a plain VRRPv3 sender, or a missing key)")
        counter = struct.unpack_from("!Q", t, len(MAGIC))[0]
        if not hmac.compare_digest(t[len(MAGIC) + 8:], _tag(self.key, adv, counter)):
            raise AuthError("authentication tag does not match (wrong key or altered advert)")
        if abs(counter - self.wall()) > self.window_ns:
            raise AuthError("counter too far from our clock (replayed advert, or clocks not in sync)")
        if counter <= self.last.get(source, -1):
            raise AuthError("counter not newer than the last advert (replayed advert)")
        self.last[source] = counter
