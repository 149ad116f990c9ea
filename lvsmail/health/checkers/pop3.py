"""POP3 and pop3s checks (RFC 1939, RFC 2595 STLS, RFC 8314 implicit TLS).

The dialogue: the ``+OK`` greeting, ``STLS`` when TLS is ``starttls``,
``USER``/``PASS`` and ``STAT`` when credentials are given, ``QUIT``. Each reply
is one status line (``+OK`` or ``-ERR``); nothing multi-line is asked for.

A POP3 login locks the maildrop for the session (RFC 1939 section 8), so the
check's account must be one no person uses. The verdict is reached before
``QUIT``; its reply cannot fail the check.
"""

from __future__ import annotations

from lvsmail.health.checkers.dialogue import CheckFailed, Dialogue, clip
from lvsmail.health.checkers.replies import pop3_ok
from lvsmail.health.credentials import Credentials
from lvsmail.spec import CheckSpec


async def _ask(dlg: Dialogue, command: str, verb: str) -> str:
    """Send one command and return its ``+OK`` line; ``-ERR`` (or anything else) fails the check."""
    await dlg.send(command + "\r\n")
    line = await dlg.read_line(f"reply to {verb}")
    if not pop3_ok(line):
        raise CheckFailed(f"{verb} failed: {clip(line)}")
    return line


async def check(dlg: Dialogue, spec: CheckSpec, tls: str, credentials: Credentials | None) -> None:
    """The POP3 dialogue; returns when the server passed, raises CheckFailed when not."""
    await dlg.connect(greeting_first=tls != "implicit")
    if tls == "implicit":
        await dlg.start_tls()
        dlg.did("TLS")
    greeting = await dlg.read_line("greeting")
    if not pop3_ok(greeting):
        raise CheckFailed(f"greeting {clip(greeting)}")
    dlg.did("greeting")
    if tls == "starttls":
        await _ask(dlg, "STLS", "STLS")
        await dlg.start_tls()
        dlg.did("STLS")
    if credentials is not None:
        await _ask(dlg, f"USER {credentials.user}", "USER")
        await _ask(dlg, f"PASS {credentials.password}", "PASS")
        await _ask(dlg, "STAT", "STAT")
        dlg.did("USER", "PASS", "STAT")
    dlg.decided = True
    await dlg.send("QUIT\r\n")
    line = await dlg.read_line("reply to QUIT")
    if not pop3_ok(line):
        dlg.note = f"QUIT answered {clip(line)}"
    dlg.did("QUIT")
