"""What a real server and a director agree on: the member, the key file and the request signature.

A request is authenticated by an HMAC-SHA256 (RFC 2104) over a canonical string
that binds the method, the path, a timestamp, a one-time nonce, the member's
address and a SHA-256 digest of the body::

    lvsmail-registration-v1 \\n METHOD \\n PATH \\n TIMESTAMP \\n NONCE \\n MEMBER \\n SHA256(BODY) hex

sent in the headers ``X-Lvsmail-Member``, ``X-Lvsmail-Timestamp`` (integer Unix
seconds), ``X-Lvsmail-Nonce`` (32 lower-case hex digits) and
``X-Lvsmail-Signature`` (64 lower-case hex digits).

The key is never the cluster secret itself but a *member key*,
HMAC-SHA256(secret, "lvsmail member key" NUL address): a director holding the
secret derives any member's key, while a real server can be given only its own
(a key file with ``member=`` and ``key=``), so a compromised real server cannot
sign for another address even if it could forge its source address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field

from lvsmail.secretfile import SecretFileError, read_secret_file

#: Request headers carrying the authentication.
H_MEMBER, H_TIMESTAMP, H_NONCE, H_SIGNATURE = (
    "x-lvsmail-member", "x-lvsmail-timestamp", "x-lvsmail-nonce", "x-lvsmail-signature")
#: Domain separation: a signature for this API can never be valid for anything else.
_CONTEXT = b"lvsmail-registration-v1"
_KEY_CONTEXT = b"lvsmail member key\0"
NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")
SIGNATURE_RE = re.compile(r"[0-9a-f]{64}\Z")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
#: A secret shorter than this is refused: 32 characters of `openssl rand -hex 16` carry 128 bits.
MIN_SECRET = 32
_MAX_TOKEN_BYTES = 4096


class TokenError(ValueError):
    """The key file is missing, unsafe or malformed (the message never contains the secret)."""


class ProtocolError(ValueError):
    """A member description or reply that does not follow the protocol."""


@dataclass(frozen=True)
class Member:
    """A real server offering itself to some services of the cluster.

    ``ports`` maps a service to the port the member listens on, for nat services whose real
    servers use another port than the VIP's; every other service uses its own port.
    """

    address: str
    services: tuple[str, ...]
    weight: int = 1
    ports: tuple[tuple[str, int], ...] = ()
    name: str | None = None  # the host's name, shown by `director status`

    def __post_init__(self) -> None:
        """Normalise the address and refuse what no director would accept, before any traffic."""
        object.__setattr__(self, "address", normalise_address(self.address))
        object.__setattr__(self, "services", tuple(self.services))
        object.__setattr__(self, "ports", tuple((str(s), int(p)) for s, p in dict(self.ports).items()))
        if not self.services:
            raise ProtocolError("a member needs at least one service")
        for svc in self.services:
            if not isinstance(svc, str) or not NAME_RE.match(svc):
                raise ProtocolError(f"{svc!r} is not a service name")
        if len(set(self.services)) != len(self.services):
            raise ProtocolError("a service is listed twice")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or not 0 <= self.weight <= 65535:
            raise ProtocolError(f"weight {self.weight!r} must be an integer between 0 and 65535")
        for svc, port in self.ports:
            if svc not in self.services:
                raise ProtocolError(f"port given for {svc!r}, which is not among the member's services")
            if not 1 <= port <= 65535:
                raise ProtocolError(f"port {port} for {svc!r} must be between 1 and 65535")
        if self.name is not None and not NAME_RE.match(self.name):
            raise ProtocolError(f"{self.name!r} is not a valid name (letters, digits, '.', '_', '-')")

    def port_for(self, service: str) -> int | None:
        """The port given for ``service``, or None for the service's own."""
        return dict(self.ports).get(service)

    def to_json(self) -> dict:
        """The request body of a registration."""
        services = []
        for svc in self.services:
            port = self.port_for(svc)
            services.append({"name": svc} if port is None else {"name": svc, "port": port})
        body: dict = {"address": self.address, "services": services, "weight": self.weight}
        if self.name is not None:
            body["name"] = self.name
        return body

    @classmethod
    def from_json(cls, data: object) -> Member:
        """Parse a registration body; ProtocolError says what is wrong."""
        if not isinstance(data, dict):
            raise ProtocolError("the body must be a JSON object")
        unknown = set(data) - {"address", "services", "weight", "name"}
        if unknown:
            raise ProtocolError(f"unknown field(s): {', '.join(sorted(unknown))}")
        address = data.get("address")
        if not isinstance(address, str):
            raise ProtocolError("address must be a string")
        items = data.get("services")
        if not isinstance(items, list):
            raise ProtocolError("services must be a list")
        names, ports = [], []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or set(item) - {"name", "port"}:
                raise ProtocolError('each service must be {"name": ..., "port": ...} (port optional)')
            names.append(item["name"])
            if "port" in item:
                port = item["port"]
                if isinstance(port, bool) or not isinstance(port, int):
                    raise ProtocolError(f"port of {item['name']!r} must be an integer")
                ports.append((item["name"], port))
        weight = data.get("weight", 1)
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise ProtocolError("name must be a string")
        return cls(address=address, services=tuple(names), weight=weight, ports=tuple(ports), name=name)


def normalise_address(text: object) -> str:
    """A unicast IP address in compressed form (host names are never resolved)."""
    try:
        addr = ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise ProtocolError(f"{text!r} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast or getattr(addr, "scope_id", None):
        raise ProtocolError(f"{text!r} is not a unicast address")
    return addr.compressed


# -- keys ----------------------------------------------------------------------------

def member_key(secret: bytes, address: str) -> bytes:
    """The key that signs requests for ``address``, derived from the cluster secret."""
    return hmac.new(secret, _KEY_CONTEXT + normalise_address(address).encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Token:
    """The contents of a key file: the cluster secret (directors), or one member's key."""

    secret: bytes | None = field(default=None, repr=False)
    member: str | None = None
    key: bytes | None = field(default=None, repr=False)
    source: str = ""

    def key_for(self, address: str) -> bytes:
        """The signing key for ``address``; a member key file serves only its own address."""
        address = normalise_address(address)
        if self.secret is not None:
            return member_key(self.secret, address)
        if self.member != address:
            raise TokenError(f"key file {self.source}: holds the key of {self.member}, not of {address}")
        return self.key


def load_token(path: str, *, owner_uid: int | None = None) -> Token:
    """Read a key file: a regular file with mode 0600 or stricter, owned by ``owner_uid``.

    The default owner is the user lvsmail runs as (root on directors and real servers), so a
    key file that anyone else could have written or read is refused.
    """
    owner_uid = os.geteuid() if owner_uid is None else owner_uid
    try:
        data = read_secret_file(path, "key file", owner_uid=owner_uid, max_bytes=_MAX_TOKEN_BYTES)
    except SecretFileError as exc:
        raise TokenError(str(exc)) from None
    return parse_token(data, path)


def parse_token(data: bytes, source: str = "<memory>") -> Token:
    """``secret=...`` or ``member=ADDRESS`` + ``key=HEX`` lines; ``#`` comments; values never quoted back."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError(f"key file {source}: not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in ("secret", "member", "key"):
            raise TokenError(f"key file {source}:{number}: expected secret=..., or member=... and key=...")
        if key in values:
            raise TokenError(f"key file {source}:{number}: {key} given twice")
        values[key] = value
    if "secret" in values:
        if set(values) != {"secret"}:
            raise TokenError(f"key file {source}: secret= cannot be combined with member= or key=")
        if len(values["secret"]) < MIN_SECRET:
            raise TokenError(f"key file {source}: the secret is shorter than {MIN_SECRET} characters; "
                             "generate one with `openssl rand -hex 32`")
        return Token(secret=values["secret"].encode(), source=source)
    if set(values) != {"member", "key"}:
        raise TokenError(f"key file {source}: expected secret=, or both member= and key=")
    try:
        member = normalise_address(values["member"])
    except ProtocolError as exc:
        raise TokenError(f"key file {source}: member: {exc}") from None
    if not SIGNATURE_RE.match(values["key"]):
        raise TokenError(f"key file {source}: key must be 64 hex digits (as `member_key_file` writes it)")
    return Token(member=member, key=bytes.fromhex(values["key"]), source=source)


def member_key_file(secret: bytes, address: str) -> str:
    """The text of a key file that lets ``address`` (and only it) sign requests."""
    address = normalise_address(address)
    return (f"# lvsmail registration key of member {address}; keep mode 0600, owner root\n"
            f"member={address}\nkey={member_key(secret, address).hex()}\n")


# -- signatures ----------------------------------------------------------------------

def canonical(method: str, path: str, timestamp: str, nonce: str, member: str, body: bytes) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    digest = hashlib.sha256(body).hexdigest()
    return b"\n".join([_CONTEXT, method.upper().encode(), path.encode("utf-8"), timestamp.encode(),
                       nonce.encode(), member.encode(), digest.encode()])


def signature(key: bytes, method: str, path: str, timestamp: str, nonce: str, member: str, body: bytes) -> str:
    """HMAC-SHA256 of the canonical string, in hex."""
    return hmac.new(key, canonical(method, path, timestamp, nonce, member, body), hashlib.sha256).hexdigest()


def sign(key: bytes, member: str, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    """The authentication headers of one request, with a fresh nonce."""
    timestamp, nonce = str(int(now)), secrets.token_hex(16)
    return {H_MEMBER: member, H_TIMESTAMP: timestamp, H_NONCE: nonce,
            H_SIGNATURE: signature(key, method, path, timestamp, nonce, member, body)}


def members_path(address: str) -> str:
    """The path of one member's resource (IPv6 addresses travel as they are: ':' is allowed in a path)."""
    return f"/v1/members/{normalise_address(address)}"
