"""The director's membership: joined members kept across restarts, and the API that changes them.

The Director owns one ``Membership``; it asks it for the merged spec wherever it
needs the effective cluster, and lets it start, restart or stop the API when the
cluster file's ``registration`` section appears, changes or goes away.

A director may start before its inside address is configured (boot order, or a
link brought up later): then none of the listen addresses is ours yet, and the
director tries again every repair period (``retry``) until one is.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from lvsmail.registration.members import MemberStore, stranded, with_members
from lvsmail.registration.protocol import TokenError, load_token
from lvsmail.registration.server import Connections, RegistrationAPI, server_context
from lvsmail.spec import ClusterSpec, RegistrationSpec

log = logging.getLogger("lvsmail.registration")


class Membership:
    """Joined members of one cluster on one director, and the API that serves them."""

    def __init__(self, path: str | Path, spec: Callable[[], ClusterSpec],
                 on_change: Callable[[set[str]], Awaitable[None]], connections: Connections):
        self.store = MemberStore(path)
        self.spec = spec
        self.on_change = on_change
        self.connections = connections
        self.api: RegistrationAPI | None = None
        self._serving: tuple | None = None  # (listen, tls_cert, tls_key, token_file) the API was started with
        self._waiting: ClusterSpec | None = None  # no listen address was ours yet: retried (``retry``)

    def load(self, spec: ClusterSpec) -> None:
        """Read the persisted members (before the first table is computed).

        ``registration.members_file`` moves them out of the state directory, which is usually
        under /run and emptied at boot: a director that reboots must still know its members.
        """
        reg = spec.registration
        if reg is not None and reg.members_file:
            self.store.path = Path(reg.members_file)
        self.store.load()
        if self.store.members:
            log.info("registration: %d joined members restored from %s", len(self.store.members), self.store.path)

    def merged(self, spec: ClusterSpec) -> ClusterSpec:
        """``spec`` with the joined members as real servers of their services."""
        return with_members(spec, self.store.members.values())

    def published(self, spec: ClusterSpec) -> list[dict]:
        """The joined real servers as ``director status`` shows them: service key, address, port, drained."""
        from lvsmail.ipvs.desired import service_key

        static = {(s.name, rs.address, rs.port) for s in spec.services for rs in s.realservers}
        merged = {(s.name, rs.address, rs.port) for s in self.merged(spec).services for rs in s.realservers} - static
        out = []
        for svc in spec.services:
            for address, jm in sorted(self.store.members.items()):
                port = jm.member.port_for(svc.name) or (svc.port if svc.port is not None else 0)
                if svc.name in jm.member.services and (svc.name, address, port) in merged:
                    out.append({"service": str(service_key(svc)), "name": svc.name, "address": address,
                                "port": port, "drained": jm.drained, "member_name": jm.member.name,
                                "since": jm.since})
        return out

    async def configure(self, spec: ClusterSpec) -> None:
        """Serve the API as ``spec.registration`` says; a problem is logged and leaves the API off.

        The director keeps balancing without the API: a broken key file must not stop mail.
        Called at start and on every reload, it also names the joined members the new file
        leaves out of the table for their address family (they stay stored, and come back
        with a file that carries them).
        """
        for why in stranded(spec, self.store.members.values()):
            log.warning("registration: a joined member is left out of the table: %s", why)
        reg = spec.registration
        wanted = _serving(reg)
        self._waiting = None
        if wanted == self._serving and self.api is not None:
            self.api.token = _reload_token(reg, self.api.token)
            return
        await self.close()
        if wanted is None:
            return
        try:
            token = load_token(reg.token_file)
            api = RegistrationAPI(self.spec, token, self.store, self.on_change, self.connections)
            context = server_context(reg.tls_cert, reg.tls_key) if reg.tls_cert else None
            await api.start(reg.listen_addresses, context)
        except (TokenError, ValueError, OSError) as exc:
            waiting = isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL
            log.error("registration: API not started on %s: %s%s", ", ".join(reg.listen), exc,
                      "; started when one of them is configured here" if waiting else "")
            if waiting:
                self._waiting = spec
            return
        self.api, self._serving = api, wanted

    async def retry(self) -> None:
        """Start the API if it waits for a listen address that is now one of ours (every repair period)."""
        spec = self._waiting
        if spec is None or not any(_is_local(host) for host, _ in spec.registration.listen_addresses):
            return
        await self.configure(spec)

    async def close(self) -> None:
        """Stop serving (members stay persisted)."""
        if self.api is not None:
            await self.api.close()
            self.api, self._serving = None, None


def _is_local(host: str) -> bool:
    """Whether ``host`` is an address of this host (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True


def _serving(reg: RegistrationSpec | None) -> tuple | None:
    """What a running API depends on; a change restarts it."""
    if reg is None or not reg.listen:
        return None
    return reg.listen, reg.tls_cert, reg.tls_key, reg.token_file


def _reload_token(reg: RegistrationSpec, current):
    """Re-read the key file on reload (a rotated secret); keep the old one if the new file is unusable."""
    try:
        token = load_token(reg.token_file)
    except TokenError as exc:
        log.error("registration: keeping the previous secret: %s", exc)
        return current
    if token.secret is None:
        log.error("registration: keeping the previous secret: %s holds a member key, not secret=", reg.token_file)
        return current
    return token
