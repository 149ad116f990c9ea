"""``type: connect``: a TCP connection, and the TLS handshake when the check's ``tls`` is implicit."""

from __future__ import annotations

from lvsmail.health.checkers.dialogue import Dialogue
from lvsmail.health.credentials import Credentials
from lvsmail.spec import CheckSpec


async def check(dlg: Dialogue, spec: CheckSpec, tls: str, credentials: Credentials | None) -> None:
    """Connect (and handshake); nothing is sent, so any TCP service can be checked this way."""
    await dlg.connect()
    dlg.did("connect")
    if tls == "implicit":
        await dlg.start_tls()
        dlg.did("TLS")
