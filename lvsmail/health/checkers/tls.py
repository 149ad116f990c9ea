"""TLS client contexts for checks.

Policy:

* ``verify: true`` (the default) verifies the certificate chain against
  ``ca_file`` (or the system's trust store when none is given);
* the name is checked only when one is known: ``server_name``, or for HTTPS
  the ``host`` (ldirectord's ``virtualhost``). Real servers are addressed by IP
  and usually carry a certificate for the service's name, not for their own
  address, so with no name the chain is verified but the name is not — status
  should say so (``name_checked`` tells);
* ``verify: false`` accepts any certificate (status shows it);
* TLS 1.2 or later (RFC 8996 deprecates 1.0 and 1.1).

Contexts are cached per (verify, CA file and its mtime, name check), because
loading a CA bundle costs far more than a check and a thousand real servers
share a handful of settings.
"""

from __future__ import annotations

import functools
import os
import ssl

from lvsmail.spec import CheckSpec


def server_name(spec: CheckSpec) -> str | None:
    """The name to send in SNI and to verify: ``server_name``, else an HTTPS check's ``host``."""
    if spec.server_name:
        return spec.server_name
    if spec.type == "https" and spec.host:
        return spec.host
    return None


def name_checked(spec: CheckSpec) -> bool:
    """Whether the certificate's name is verified (for status: chain only otherwise)."""
    return spec.verify and server_name(spec) is not None


def client_context(spec: CheckSpec) -> ssl.SSLContext:
    """The (shared, cached) client context for a check's TLS settings."""
    mtime = 0
    if spec.verify and spec.ca_file:
        try:
            mtime = os.stat(spec.ca_file).st_mtime_ns  # a replaced CA bundle gets a new context
        except OSError:
            mtime = -1  # loading will fail with the real error
    return _context(spec.verify, spec.ca_file if spec.verify else None, mtime, name_checked(spec))


@functools.lru_cache(maxsize=64)
def _context(verify: bool, ca_file: str | None, _mtime: int, check_name: bool) -> ssl.SSLContext:
    """Build one context (cached by the caller's key)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = check_name
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
