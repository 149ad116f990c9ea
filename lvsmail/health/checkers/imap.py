"""IMAP and imaps checks (RFC 9051 / RFC 3501, RFC 8314 implicit TLS).

The dialogue: the greeting (``* OK`` or ``* PREAUTH``; ``* BYE`` fails),
``CAPABILITY``, ``STARTTLS`` and a second ``CAPABILITY`` when TLS is ``starttls``
(RFC 9051 section 6.2.1: capabilities learnt before TLS must be discarded),
``LOGIN`` when credentials are given (refused up front if the server
advertises ``LOGINDISABLED``), then ``EXAMINE`` of the mailbox, and ``LOGOUT``.

``EXAMINE`` rather than ``SELECT``: it opens the mailbox read-only (RFC 3501
section 6.3.2), so a check every few seconds never clears the ``\\Recent``
flags the account's real clients rely on, nor touches anything else.

User, password and mailbox travel as quoted strings when they are 7-bit,
else as synchronising literals (RFC 9051 section 4.3). Mailbox names are sent
as given (UTF-8; an IMAP4rev1-only server needs modified UTF-7 names, which
the configuration must then spell).

The verdict is reached before ``LOGOUT``; its reply cannot fail the check.
"""

from __future__ import annotations

import itertools

from lvsmail.health.checkers.dialogue import CheckFailed, Dialogue, clip
from lvsmail.health.checkers.replies import (
    MAX_REPLY_BYTES,
    imap_capabilities,
    imap_greeting,
    imap_literal_size,
    imap_tagged,
)
from lvsmail.health.credentials import Credentials
from lvsmail.spec import CheckSpec

#: Most response lines to one command (EXAMINE answers with about ten).
MAX_RESPONSE_LINES = 1000
#: Largest literal accepted inside a response (RFC 9051 section 4.3 sets none). Its bytes are skipped as
#: they come, never held; the limit and MAX_CHECK_BYTES bound the time a peer can keep us reading.
LITERAL_LIMIT = 1 << 20


class Astring:
    """An argument that needs quoting: a user name, password or mailbox name."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "Astring(<hidden>)"


def quotable(value: str) -> bool:
    """Whether ``value`` can be a quoted string (7-bit, no CR, LF or NUL: RFC 9051 section 4.3)."""
    return value.isascii() and not any(ch in value for ch in "\0\r\n")


def quoted(value: str) -> bytes:
    """``value`` as an IMAP quoted string, with ``"`` and ``\\`` escaped."""
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


async def _tagged(dlg: Dialogue, tag: str, waiting_for: str) -> tuple[str, str, list[str]]:
    """Read up to the tagged response: (status, text, untagged lines); literals are skipped.

    The response is held to MAX_RESPONSE_LINES lines and MAX_REPLY_BYTES bytes of text kept.
    """
    untagged: list[str] = []
    logical = ""  # an untagged response continues after each literal it carries
    kept = 0  # characters of text held for this response
    for _ in range(MAX_RESPONSE_LINES):
        line = await dlg.read_line(waiting_for)
        kept += len(line)
        if kept > MAX_REPLY_BYTES:
            raise CheckFailed(f"response longer than {MAX_REPLY_BYTES} bytes waiting for {waiting_for}")
        logical += line
        size = imap_literal_size(line)
        if logical.startswith("* ") and size is not None:
            if size > LITERAL_LIMIT:
                raise CheckFailed(f"literal of {size} bytes waiting for {waiting_for}")
            await dlg.skip(size, waiting_for)
            logical = logical[: logical.rindex("{")] + "{...}"
            continue
        line, logical = logical, ""
        tagged = imap_tagged(line, tag)
        if tagged is not None:
            return tagged[0], tagged[1], untagged
        if not line.startswith("* "):
            raise CheckFailed(f"unexpected line waiting for {waiting_for}: {clip(line)!r}")
        untagged.append(line)
    raise CheckFailed(f"more than {MAX_RESPONSE_LINES} lines waiting for {waiting_for}")


async def command(dlg: Dialogue, tag: str, verb: str, *args: str | Astring) -> tuple[str, str, list[str]]:
    """Send ``tag verb args`` (literals wait for the server's ``+``) and read the tagged response."""
    pending = bytearray(f"{tag} {verb}".encode())
    for arg in args:
        if not isinstance(arg, Astring):
            pending += b" " + arg.encode()
        elif quotable(arg.value):
            pending += b" " + quoted(arg.value)
        else:
            data = arg.value.encode()
            pending += b" {%d}\r\n" % len(data)
            await dlg.send(bytes(pending))
            line = await dlg.read_line(f"continuation for {verb}")
            if not line.startswith("+"):
                tagged = imap_tagged(line, tag)
                if tagged is not None:
                    return tagged[0], tagged[1], []
                raise CheckFailed(f"no continuation for {verb}: {clip(line)!r}")
            pending = bytearray(data)
    await dlg.send(bytes(pending) + b"\r\n")
    return await _tagged(dlg, tag, f"reply to {verb}")


async def _capabilities(dlg: Dialogue, tag: str) -> set[str]:
    """CAPABILITY and the capability names it lists (upper case)."""
    status, text, untagged = await command(dlg, tag, "CAPABILITY")
    if status != "OK":
        raise CheckFailed(f"CAPABILITY failed: {status} {text}")
    return imap_capabilities(untagged)


async def check(dlg: Dialogue, spec: CheckSpec, tls: str, credentials: Credentials | None) -> None:
    """The IMAP dialogue; returns when the server passed, raises CheckFailed when not."""
    tags = (f"L{n}" for n in itertools.count(1))
    await dlg.connect(greeting_first=tls != "implicit")
    if tls == "implicit":
        await dlg.start_tls()
        dlg.did("TLS")
    greeting = await dlg.read_line("greeting")
    kind = imap_greeting(greeting)
    if kind not in ("OK", "PREAUTH"):
        if kind == "BYE":
            raise CheckFailed(f"greeting {clip(greeting[2:])}")
        raise CheckFailed(f"not an IMAP greeting: {clip(greeting)!r}")
    dlg.did("greeting")
    caps = await _capabilities(dlg, next(tags))
    dlg.did("CAPABILITY")
    if tls == "starttls":
        if "STARTTLS" not in caps:
            raise CheckFailed("STARTTLS not offered in CAPABILITY (required by tls: starttls)")
        status, text, _ = await command(dlg, next(tags), "STARTTLS")
        if status != "OK":
            raise CheckFailed(f"STARTTLS failed: {status} {text}")
        await dlg.start_tls()
        caps = await _capabilities(dlg, next(tags))
        dlg.did("STARTTLS", "CAPABILITY")
    if credentials is not None:
        if kind == "PREAUTH":
            dlg.note = "PREAUTH greeting, LOGIN skipped"
        else:
            if "LOGINDISABLED" in caps:
                raise CheckFailed("LOGIN not possible: server advertises LOGINDISABLED"
                                  + ("" if dlg.tls else " (use tls: starttls)"))
            status, text, _ = await command(dlg, next(tags), "LOGIN",
                                            Astring(credentials.user), Astring(credentials.password))
            if status != "OK":
                raise CheckFailed(f"LOGIN failed: {status} {text}")
            dlg.did("LOGIN")
        status, text, _ = await command(dlg, next(tags), "EXAMINE", Astring(spec.mailbox))
        if status != "OK":
            raise CheckFailed(f"EXAMINE {clip(spec.mailbox, 60)} failed: {status} {text}")
        dlg.did(f"EXAMINE {clip(spec.mailbox, 60)}")
    dlg.decided = True
    status, text, _ = await command(dlg, next(tags), "LOGOUT")
    if status != "OK":
        dlg.note = f"LOGOUT answered {status} {text}"
    dlg.did("LOGOUT")
