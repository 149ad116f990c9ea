"""SMTP, submission and smtps checks (RFC 5321, RFC 3207 STARTTLS, RFC 4954 AUTH, RFC 8314 implicit TLS).

The dialogue: the whole greeting (``220-`` continuation lines up to ``220 ``)
before saying anything — Postfix's postscreen penalises clients that talk
before the greeting ends, and keepalived's one-line read fails on multi-line
greetings — then ``EHLO`` and its multi-line 250 reply, ``STARTTLS`` and a
second ``EHLO`` when TLS is ``starttls`` (required and fatal when not offered),
``AUTH PLAIN`` (else ``AUTH LOGIN``) when credentials are given, and ``QUIT``.

The verdict is reached before ``QUIT``: a server that greeted, accepted EHLO
(and STARTTLS/AUTH) serves mail. A missing or different reply to ``QUIT``
(connection dropped, ``421``, no answer before the timeout) is noted in the
reason but does not fail the check — client MTAs ignore it too.
"""

from __future__ import annotations

import base64
import socket

from lvsmail.health.checkers.dialogue import CheckFailed, Dialogue, clip
from lvsmail.health.credentials import Credentials
from lvsmail.spec import CheckSpec

#: EHLO name when the check sets no ``helo``: this director's host name (read once; no DNS lookup).
DEFAULT_HELO = socket.gethostname() or "localhost"


def _text(lines: list[str]) -> str:
    """A reply's text for a reason: its lines joined."""
    return clip(" ".join(t for t in lines if t))


async def _ehlo(dlg: Dialogue, helo: str) -> list[str]:
    """EHLO and its multi-line 250 reply (RFC 5321 section 4.1.1.1): the reply's lines."""
    await dlg.send(f"EHLO {helo}\r\n")
    code, lines = await dlg.read_smtp_reply("reply to EHLO")
    if code != 250:
        raise CheckFailed(f"EHLO {code} {_text(lines)}")
    return lines


def _extensions(lines: list[str]) -> dict[str, list[str]]:
    """An EHLO reply's extensions as keyword -> parameters (read only when STARTTLS or AUTH needs them)."""
    extensions: dict[str, list[str]] = {}
    for line in lines[1:]:  # the first line is the server's name and greeting
        words = line.split()
        if words:
            extensions[words[0].upper()] = [w.upper() for w in words[1:]]
    return extensions


async def _auth(dlg: Dialogue, extensions: dict[str, list[str]], credentials: Credentials) -> str:
    """AUTH PLAIN with an initial response, else AUTH LOGIN (RFC 4954, RFC 4616); returns the mechanism."""
    offered = extensions.get("AUTH", [])
    if "PLAIN" in offered:
        token = base64.b64encode(b"\0" + credentials.user.encode() + b"\0" + credentials.password.encode())
        dlg.step = "AUTH PLAIN"
        await dlg.send(b"AUTH PLAIN " + token + b"\r\n")
        code, lines = await dlg.read_smtp_reply("reply to AUTH PLAIN")
        if code != 235:
            raise CheckFailed(f"AUTH PLAIN failed: {code} {_text(lines)}")
        return "AUTH PLAIN"
    if "LOGIN" in offered:
        await dlg.send("AUTH LOGIN\r\n")
        for what, value in (("user name", credentials.user), ("password", credentials.password)):
            code, lines = await dlg.read_smtp_reply(f"AUTH LOGIN {what} prompt")
            if code != 334:
                raise CheckFailed(f"AUTH LOGIN failed: {code} {_text(lines)}")
            await dlg.send(base64.b64encode(value.encode()) + b"\r\n")
        code, lines = await dlg.read_smtp_reply("reply to AUTH LOGIN")
        if code != 235:
            raise CheckFailed(f"AUTH LOGIN failed: {code} {_text(lines)}")
        return "AUTH LOGIN"
    if not offered:
        raise CheckFailed("AUTH not offered" + ("" if dlg.tls else " (before TLS)") + " but credentials are configured")
    raise CheckFailed(f"AUTH offers {' '.join(offered)}, none of PLAIN or LOGIN")


async def check(dlg: Dialogue, spec: CheckSpec, tls: str, credentials: Credentials | None) -> None:
    """The SMTP dialogue; returns when the server passed, raises CheckFailed when not."""
    helo = spec.helo or DEFAULT_HELO
    await dlg.connect(greeting_first=tls != "implicit")
    if tls == "implicit":
        await dlg.start_tls()
        dlg.did("TLS")
    code, lines = await dlg.read_smtp_reply("greeting")
    if code != 220:  # 421 (RFC 5321 section 3.8) or 554 (section 3.1): no service here now
        raise CheckFailed(f"greeting {code} {_text(lines)}")
    ehlo = await _ehlo(dlg, helo)
    dlg.did("greeting", "EHLO")
    if tls == "starttls":
        if "STARTTLS" not in _extensions(ehlo):
            need = "required for submission" if spec.type == "submission" else "required by tls: starttls"
            raise CheckFailed(f"STARTTLS not offered in the EHLO reply ({need})")
        await dlg.send("STARTTLS\r\n")
        code, lines = await dlg.read_smtp_reply("reply to STARTTLS")
        if code != 220:
            raise CheckFailed(f"STARTTLS {code} {_text(lines)}")
        await dlg.start_tls()
        ehlo = await _ehlo(dlg, helo)  # RFC 3207 section 4.2: forget what was said before TLS
        dlg.did("STARTTLS", "EHLO")
    if credentials is not None:
        dlg.did(await _auth(dlg, _extensions(ehlo), credentials))
    dlg.decided = True
    await dlg.send("QUIT\r\n")
    code, lines = await dlg.read_smtp_reply("reply to QUIT")
    if code != 221:
        dlg.note = f"QUIT answered {code} {_text(lines)}"
    dlg.did("QUIT")
