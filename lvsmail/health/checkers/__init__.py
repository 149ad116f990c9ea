"""Health checkers: one linear coroutine per protocol family, and ``probe`` to run any of them.

A checker connects, reads each whole reply, checks its code and goes on to the
next step; it never sleeps, retries or counts (the engine and the rise/fall
state machine do). ``probe`` gives it the check's ``timeout`` as one deadline
over the whole dialogue, closes the connection however it ends, and turns
every outcome into a ``Result`` whose reason names the protocol, the peer and
the step::

    smtp 127.0.0.1:2525: greeting 421 4.3.2 busy
    smtp 127.0.0.1:2525: timeout after 2.0 s waiting for greeting
    imap 127.0.0.1:1143: LOGIN failed: NO [AUTHENTICATIONFAILED] Authentication failed.

Network and protocol problems never raise out of ``probe``; cancellation
does (after the socket is closed). ``probe`` runs on the check driver
(``lvsmail.health.driver``), as the engine runs it; ``run_check`` is the same
check awaited from ordinary asyncio code (the API, the command line, tests).

Credentials are sent only over TLS, or to a loopback address (where, like
Dovecot's ``disable_plaintext_auth``, clear text never leaves the host); a
check configured otherwise fails without connecting. Reasons are scrubbed of
the password in every encoding a dialogue could carry it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable

from lvsmail.health.checkers import external, http, imap, pop3, smtp, tcp
from lvsmail.health.checkers import tls as tlsconf
from lvsmail.health.checkers.dialogue import CheckFailed, Dialogue, hostport
from lvsmail.health.credentials import Credentials
from lvsmail.health.driver import deadline as driver_deadline
from lvsmail.health.driver import driver_for
from lvsmail.health.result import Result
from lvsmail.spec import CheckSpec

log = logging.getLogger(__name__)

Checker = Callable[[Dialogue, CheckSpec, str, "Credentials | None"], Awaitable[None]]

#: The dialogue for each check type (``external``, ``on`` and ``off`` are handled by run_check).
CHECKERS: dict[str, Checker] = {
    "connect": tcp.check,
    "smtp": smtp.check, "submission": smtp.check, "smtps": smtp.check,
    "imap": imap.check, "imaps": imap.check,
    "pop3": pop3.check, "pop3s": pop3.check,
    "http": http.check, "https": http.check,
}
#: Types that only exist with implicit TLS (RFC 8314 section 3.3; HTTPS, RFC 9110 section 4.2.2).
IMPLICIT_TLS_TYPES = frozenset({"smtps", "imaps", "pop3s", "https"})


def tls_mode(spec: CheckSpec) -> str:
    """``none``, ``starttls`` or ``implicit``: the spec's, except that smtps/imaps/pop3s/https are always implicit."""
    return "implicit" if spec.type in IMPLICIT_TLS_TYPES else spec.tls


def cleartext_allowed(address: str) -> bool:
    """Whether credentials may be sent without TLS to ``address``: only to loopback, where they stay on the host."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def seconds(value: float) -> str:
    """A duration as reasons write it: ``2.0 s``, ``0.5 s``, ``0.25 s``."""
    return f"{value:.1f} s" if round(value, 1) == value else f"{value:g} s"


async def run_check(spec: CheckSpec, address: str, port: int, credentials: Credentials | None = None, *,
                    virtual: tuple[str, int | None] | None = None, mark: int | None = None,
                    source: str | None = None, peer: str | None = None) -> Result:
    """``probe`` from asyncio code: the same check, run on this loop's check driver."""
    return await driver_for().run(probe(spec, address, port, credentials, virtual=virtual, mark=mark,
                                        source=source, peer=peer))


async def probe(spec: CheckSpec, address: str, port: int, credentials: Credentials | None = None, *,
                virtual: tuple[str, int | None] | None = None, mark: int | None = None,
                source: str | None = None, peer: str | None = None) -> Result:
    """Check one real server once and return the Result; never raises for network or protocol trouble.

    A coroutine for the check driver (the engine spawns it there; ``run_check``
    runs it from asyncio code).

    ``port`` is the real server's port; the check's ``port`` (ldirectord's
    ``checkport``) overrides it. ``virtual`` is the virtual service
    (VIP or fwmark, port) for external commands. ``mark`` sets ``SO_MARK`` on
    the probe's socket (checks routed through the VIP; needs CAP_NET_ADMIN) and
    ``source`` binds it to a local address; ``peer`` names the server in reasons
    when the address connected to is not the server's own (the VIP).
    """
    port = spec.port or port
    peer = peer or hostport(address, port)
    if spec.type == "off":
        return Result(False, f"off {peer}: checks are off, the server is kept down", 0.0, "off")
    if spec.type == "on":
        return Result(True, f"on {peer}: checks are off, the server is kept up", 0.0, "on")
    tls = tls_mode(spec)
    if credentials is not None and tls == "none" and spec.type != "external" and not cleartext_allowed(address):
        return Result(False, f"{spec.type} {peer}: refusing to send credentials in clear text to a non-loopback "
                             f"address (set tls: starttls)", 0.0, "policy")
    dlg = Dialogue(spec.type, address, port, mark, source)
    if tls != "none":
        try:
            dlg.tls_context = tlsconf.client_context(spec)
        except (OSError, ssl.SSLError) as exc:
            return Result(False, f"{spec.type} {peer}: TLS setup: cannot load CA file {spec.ca_file}: "
                                 f"{exc.strerror or exc}", 0.0, "TLS setup")
        dlg.server_name = tlsconf.server_name(spec)
    started = time.perf_counter()
    deadline = driver_deadline(spec.timeout)
    ok, tail, expired, late = False, "", False, False
    try:
        with deadline:
            if spec.type == "external":
                await external.check(dlg, spec, virtual)
            else:
                await CHECKERS[spec.type](dlg, spec, tls, credentials)
        ok = True
    except TimeoutError as exc:
        if deadline.expired():
            # The answer arrived but our event loop had not read it: we were late, not the server.
            late = dlg.timed_out()
            tail, expired = f"timeout after {seconds(spec.timeout)} waiting for {dlg.step}", True
        else:  # the kernel's own ETIMEDOUT (connect), not our deadline
            tail = _os_error(exc, dlg.step)
    except CheckFailed as exc:
        tail = str(exc)
    except ssl.SSLCertVerificationError as exc:
        tail = f"TLS handshake: certificate verify failed: {exc.verify_message or exc.reason}"
    except ssl.SSLError as exc:
        tail = f"TLS {'handshake ' if dlg.step == 'TLS handshake' else ''}failed: {exc.reason or exc}" + \
            ("" if dlg.step == "TLS handshake" else f" waiting for {dlg.step}")
    except OSError as exc:
        tail = _os_error(exc, dlg.step)
    except Exception as exc:  # a checker bug must not take the engine down; log it loudly once per check
        log.exception("%s %s: checker error", spec.type, peer)
        tail = f"checker error at {dlg.step}: {type(exc).__name__}: {exc}"
    finally:
        dlg.close()
    latency = time.perf_counter() - started
    if ok or dlg.decided:
        # A failure after the verdict (QUIT or LOGOUT unanswered) is only noted.
        notes = [n for n in (dlg.note, "" if ok else f"then {tail}") if n]
        reason = f"{spec.type} {peer}: ok: {', '.join(dlg.done)}" + (f" ({'; '.join(notes)})" if notes else "")
        return Result(True, _scrub(reason, credentials), latency, "done")
    if late:
        tail += " (inconclusive: the answer was waiting unread, the director was late)"
    return Result(False, _scrub(f"{spec.type} {peer}: {tail}", credentials), latency, dlg.step, expired=expired,
                  inconclusive=late)


def _os_error(exc: OSError, step: str) -> str:
    """``connect: connection refused`` or ``connection reset by peer waiting for reply to EHLO``."""
    text = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return f"connect: {text}" if step == "connect" else f"{text} waiting for {step}"


def _scrub(reason: str, credentials: Credentials | None) -> str:
    """Remove the password (raw and base64 forms) from a reason, should a peer have echoed it."""
    if credentials is not None:
        for secret in credentials.secrets():
            if len(secret) >= 3:
                reason = reason.replace(secret, "***")
    return reason
