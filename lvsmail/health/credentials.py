"""Login credentials for mail checks, read from a root-only file.

The cluster file names only the path (``credentials: /etc/lvsmail/imap-check``);
the secret lives in a file owned by root with no group or other permissions,
as ssh does for private keys, so it is never copied into configs, logs, status
output or reasons.

File format: ``key=value`` lines, ``#`` comments and blank lines ignored::

    # account used only by the health check
    user=healthcheck@example.org
    password=s3cret with spaces inside

``login``/``passwd`` (ldirectord's names) are accepted for ``user``/``password``.
The value is everything after the first ``=``, with surrounding whitespace
stripped (so a password cannot begin or end with a space). No quoting, no
escapes, no YAML: what is between ``=`` and the end of the line is the secret.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from lvsmail.secretfile import SecretFileError, read_secret_file

#: Accepted keys and the field each one fills.
_KEYS = {"user": "user", "login": "user", "password": "password", "passwd": "password"}
#: A credentials file is a few lines; anything bigger is not one.
_MAX_BYTES = 4096


class CredentialsError(ValueError):
    """The credentials file is missing, unsafe or malformed (the message never contains the secret)."""


@dataclass(frozen=True)
class Credentials:
    """A login for a check; the password stays out of repr, str and every reason."""

    user: str
    password: str = field(repr=False)
    source: str = ""

    def __repr__(self) -> str:
        """Show who, never the secret."""
        return f"Credentials(user={self.user!r}, password=<hidden>, source={self.source!r})"

    __str__ = __repr__

    def secrets(self) -> tuple[str, ...]:
        """Every form in which the password might travel (raw, base64, SASL PLAIN token), for redaction."""
        raw = self.password.encode()
        plain = b"\0" + self.user.encode() + b"\0" + raw
        return (self.password, base64.b64encode(raw).decode(), base64.b64encode(plain).decode())


def load_credentials(path: str, *, owner_uid: int = 0) -> Credentials:
    """Read a credentials file that must be owned by ``owner_uid`` (root) and have mode ``0o600`` or stricter."""
    try:
        data = read_secret_file(path, "credentials", owner_uid=owner_uid, max_bytes=_MAX_BYTES)
    except SecretFileError as exc:
        raise CredentialsError(str(exc)) from None
    return parse_credentials(data, path)


def parse_credentials(data: bytes, source: str = "<memory>") -> Credentials:
    """Parse ``key=value`` lines; errors name the line and key but never quote a value."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"credentials {source}: not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip().lower()
        if not sep:
            raise CredentialsError(f"credentials {source}:{number}: expected key=value (user= or password=)")
        if key not in _KEYS:
            raise CredentialsError(f"credentials {source}:{number}: unknown key {key!r}; expected user or password")
        name = _KEYS[key]
        if name in values:
            raise CredentialsError(f"credentials {source}:{number}: {name} given twice")
        value = value.strip()
        if not value:
            raise CredentialsError(f"credentials {source}:{number}: {name} is empty")
        if any(ch in value for ch in "\0\r\n"):  # cannot travel in any of the protocols' commands
            raise CredentialsError(f"credentials {source}:{number}: {name} contains a control character")
        values[name] = value
    for name in ("user", "password"):
        if name not in values:
            raise CredentialsError(f"credentials {source}: missing {name}=")
    return Credentials(values["user"], values["password"], source)
