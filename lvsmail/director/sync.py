"""Which IPVS connection-sync daemon this director runs: master on the active director, backup on the other.

The master director's kernel multicasts the state of its connections; the
backup's kernel enters them into its own table. When the backup takes over the
VIP it already knows every established session and keeps forwarding each one to
the same real server, so clients never notice. The roles swap on failover, as
heartbeat's ``LVSSyncDaemonSwap`` did: the failover code (VRRP) calls
:meth:`SyncRole.become_master` / :meth:`SyncRole.become_backup` from the
resource group of the instance marked ``sync: true``.

The kernel's own list of daemons is the truth: each call reads it and changes
only what differs, so calling twice is harmless and a daemon started by hand
with other settings is replaced. The other role's daemon is stopped *before*
this role's is started, because with ``backup_only`` set the kernel schedules
nothing while a backup daemon runs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable

from lvsmail.ipvs.model import SYNC_STATES, IPVSBackend, IPVSError, SyncDaemon
from lvsmail.spec import ClusterSpec, SyncSpec

log = logging.getLogger("lvsmail.director.sync")


def initial_role(spec: ClusterSpec) -> str:
    """The role to take at start: the configured one, or for ``auto`` master unless VRRP decides.

    With a ``failover:`` section the director starts as backup and the VRRP
    instance marked ``sync: true`` makes it master when it wins the election.
    Starting as backup is the safe side: until then this director receives the
    active director's connections instead of missing them.
    """
    sync = spec.sync
    if sync is None:
        raise ValueError("the cluster file has no sync section")
    if sync.role != "auto":
        return sync.role
    failover = getattr(spec, "failover", None)
    if failover is None:
        return "master"
    if not any(getattr(i, "sync", False) for i in failover.instances):
        log.warning("sync: role auto, but no failover instance has `sync: true`: nothing will swap roles;"
                    " running the master daemon")
        return "master"
    return "backup"


class SyncRole:
    """The sync daemon role of one director; one instance per director process."""

    def __init__(self, backend: IPVSBackend, spec: SyncSpec, *, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.spec = spec
        self.clock = clock
        self.role = "stopped"  # stopped | master | backup: what this object last made true
        self.wanted = "stopped"  # the role last asked for; differs from ``role`` after a refusal
        self.since = clock()
        self.transitions = 0
        self.last_error: str | None = None
        self._lock = asyncio.Lock()  # VRRP and a reload must not interleave their kernel calls

    def daemon(self, state: str) -> SyncDaemon:
        """The daemon request for ``state`` built from the cluster file."""
        s = self.spec
        return SyncDaemon(state=state, interface=s.interface, syncid=s.syncid, maxlen=s.maxlen or 0,
                          group=s.group or "", port=s.port or 0, ttl=s.ttl or 0)

    async def become_master(self) -> None:
        """Run the master daemon only (this director now holds the VIP)."""
        await self._become("master")

    async def become_backup(self) -> None:
        """Run the backup daemon only (the peer holds the VIP and sends us its connections)."""
        await self._become("backup")

    async def stop(self) -> None:
        """Stop both daemons (the connections already synced stay in the table until they expire)."""
        await self._become("stopped")

    async def retry(self) -> bool:
        """Try the wanted role again after a refusal (e.g. the interface did not exist yet); True if it took.

        Only a refused role is retried: a daemon changed by hand is not undone here.
        """
        if self.wanted == self.role:
            return True
        try:
            await self._become(self.wanted)
        except IPVSError:
            return False
        return True

    async def update(self, spec: SyncSpec) -> None:
        """Take new settings from a reload; restart the current role's daemon only if they changed."""
        async with self._lock:
            changed, self.spec = spec != self.spec, spec
        if changed and self.role != "stopped":
            log.info("sync: settings changed, restarting the %s daemon", self.role)
            await self._become(self.role)

    async def _become(self, role: str) -> None:
        """Make the kernel run exactly the daemon of ``role``; IPVSError (after logging) if it refuses."""
        async with self._lock:
            self.wanted = role
            try:
                await self._ensure(None if role == "stopped" else role)
            except IPVSError as exc:
                if str(exc) != self.last_error:  # a retry that fails the same way is not logged again
                    log.error("sync: cannot become %s: %s", role, exc)
                self.last_error = str(exc)
                raise
            self.last_error = None
            if role != self.role:
                log.info("sync: %s -> %s (%s)", self.role, role,
                         "no daemon" if role == "stopped" else self.daemon(role))
                self.role, self.since = role, self.clock()
                self.transitions += 1

    async def _ensure(self, want: str | None) -> None:
        running = {d.state: d for d in await self.backend.daemons()}
        for state in SYNC_STATES:  # the other role first: backup_only blocks scheduling while a backup runs
            current = running.get(state)
            if current is not None and (state != want or not self.daemon(state).covers(current)):
                await self._stop_one(state)
                running.pop(state)
        if want is not None and want not in running:
            await self.backend.start_daemon(self.daemon(want))

    async def _stop_one(self, state: str) -> None:
        try:
            await self.backend.stop_daemon(state)
        except IPVSError as exc:
            if exc.errno != errno.ESRCH:  # ESRCH: someone else stopped it between our dump and now
                raise

    def status(self) -> dict:
        """Role, since when (Unix time), transitions, settings and the last error, for status output."""
        s = self.spec
        return {
            "role": self.role, "wanted": self.wanted, "since": self.since, "transitions": self.transitions,
            "interface": s.interface, "syncid": s.syncid, "group": s.group, "port": s.port, "ttl": s.ttl,
            "maxlen": s.maxlen, "configured_role": s.role, "last_error": self.last_error,
        }



# -- following the cluster file: start, reload, repair, stop ------------------------------------------


class SyncFollower:
    """The director's sync role as its cluster file's ``sync:`` section asks: created, retuned, removed.

    ``role`` is the SyncRole (None without a ``sync:`` section); it is set
    before its first role is taken, so the failover finds it while that runs.
    ``on_change`` is called once a role is taken (the director publishes the
    role for ``status``). A refused role is logged by SyncRole, shown by
    status and retried by :meth:`retry`, so it never stops the director.
    """

    def __init__(self, backend: IPVSBackend, on_change: Callable[[], None]) -> None:
        self.backend = backend
        self.on_change = on_change
        self.role: SyncRole | None = None

    async def start(self, spec: ClusterSpec) -> None:
        """Create the role from ``sync:`` and take the initial role (see ``initial_role``)."""
        if spec.sync is None:
            return
        self.role = SyncRole(self.backend, spec.sync)
        await self._take(initial_role(spec))

    async def reload(self, spec: ClusterSpec) -> None:
        """Follow a reload: a new, changed or removed ``sync:`` section."""
        new = spec.sync
        if new is None:
            if self.role is not None:
                await self.stop()
                self.role = None
            return
        if self.role is None:
            await self.start(spec)
            return
        try:
            await self.role.update(new)
        except IPVSError:
            return  # logged by SyncRole; status shows the error, the next reload retries
        if new.role != "auto" and new.role != self.role.role:
            await self._take(new.role)

    async def retry(self) -> None:
        """Take a refused role again (the interface did not exist yet); the repair timer calls this."""
        if self.role is not None and self.role.wanted != self.role.role:
            await self.role.retry()

    async def stop(self) -> None:
        """Stop both daemons (``--flush-on-exit``, or ``sync:`` removed); a refusal is only logged."""
        if self.role is None:
            return
        try:
            await self.role.stop()
        except IPVSError:
            pass  # logged by SyncRole with the kernel's reason; nothing else to do on the way out

    async def _take(self, want: str) -> None:
        try:
            await (self.role.become_master() if want == "master" else self.role.become_backup())
        except IPVSError:
            return  # logged by SyncRole; status shows the error, the next reload (or repair) retries
        self.on_change()
