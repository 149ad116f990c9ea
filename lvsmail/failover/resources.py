"""What a VRRP master holds, and the group that takes and gives it back in order.

Per instance, an ordered group of resources is acquired when the instance
becomes master and released in reverse order when it leaves: its VIPs (added
to the interface, then announced with gratuitous ARP / unsolicited NA), the
IPVS sync daemon role when the instance says ``sync: true``, and the
``on_master`` / ``on_backup`` commands: the director's version of the seed's
failover domain that moved an address, a file system and a service together.
A step that fails rolls back what was already taken and reports why; the
instance then goes to Fault (see ``lvsmail.failover.runner``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lvsmail.failover.hooks import AddressBackend
from lvsmail.spec import VrrpInstanceSpec
from lvsmail.vrrp import announce

log = logging.getLogger("lvsmail.failover")

#: Seconds an ``on_master`` / ``on_backup`` command or a notify hook may run.
COMMAND_TIMEOUT = 60.0


class Resource(Protocol):
    """Something a master holds: acquired in order on becoming master, released in reverse on leaving."""

    name: str

    async def acquire(self) -> None:
        """Take the resource; raise to refuse (the instance goes to Fault)."""

    async def release(self) -> None:
        """Give the resource back; raise only if it could not be (logged, the rest is still released)."""


class VipResource:
    """The instance's VIPs on its interface, announced once added.

    For an address owner (priority 255) the addresses are the interface's own:
    they must be present, are announced, and are never removed.
    """

    def __init__(self, net: AddressBackend, spec: VrrpInstanceSpec, owner: bool = False,
                 announcer: Callable[..., Awaitable[None]] | None = None) -> None:
        self.name = "vips " + ",".join(spec.vips)
        self.net, self.spec, self.owner = net, spec, owner
        self.announcer = announcer or announce.Announcer().announce
        self._announcing: asyncio.Task | None = None

    async def acquire(self) -> None:
        """Add each VIP (one already there is fine), then start the announcements."""
        if self.owner:
            present = set(self.net.addresses(self.spec.interface))
            for cidr in self.spec.vips:
                if cidr not in present:
                    raise OSError(errno.EADDRNOTAVAIL, f"priority 255 claims to own {cidr} but it is not on "
                                                       f"{self.spec.interface}")
        else:
            for cidr in self.spec.vips:
                try:  # no listing first: every millisecond here delays the takeover
                    self.net.add_address(self.spec.interface, cidr)
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
        self.announce()

    def announce(self) -> None:
        """Gratuitous ARP / unsolicited NA for every VIP, ``garp.count`` times, and the same again
        ``garp.refresh`` seconds later; a new call starts over, releasing the VIPs stops both."""
        if self._announcing is not None:
            self._announcing.cancel()
        self._announcing = asyncio.create_task(self._announce_sets())

    async def _announce_sets(self) -> None:
        """The first set at once; the second in case a peer that was master for a moment announced after us."""
        addrs = tuple(str(ipaddress.ip_interface(c).ip) for c in self.spec.vips)
        garp = self.spec.garp
        await self.announcer(self.spec.interface, addrs, garp.count, garp.interval)
        if garp.refresh > 0:
            await asyncio.sleep(garp.refresh)
            await self.announcer(self.spec.interface, addrs, garp.count, garp.interval)

    async def release(self) -> None:
        """Stop announcing and remove the VIPs (an address already gone is fine)."""
        if self._announcing is not None:
            self._announcing.cancel()
            self._announcing = None
        if self.owner:
            return
        await self.clear()

    async def clear(self) -> None:
        """Remove every VIP of the instance that is on the interface (also left-overs of a killed director)."""
        present = set(self.net.addresses(self.spec.interface))
        for cidr in self.spec.vips:
            if cidr in present:
                self.net.del_address(self.spec.interface, cidr)


class SyncResource:
    """The IPVS sync daemon role: master daemon while we hold the VIPs, backup daemon otherwise."""

    name = "sync role"

    def __init__(self, role: Callable[[], Any]) -> None:
        self.role = role  # the director's SyncRole (None when the file has no sync: section)

    async def acquire(self) -> None:
        """Run the master sync daemon."""
        sync = self.role()
        if sync is None:
            raise RuntimeError("sync: true but the cluster file has no sync: section")
        await sync.become_master()

    async def release(self) -> None:
        """Back to the backup sync daemon, receiving the new master's connections."""
        sync = self.role()
        if sync is not None:
            await sync.become_backup()


class CommandResource:
    """``on_master`` commands run in order on acquiring; ``on_backup`` commands on releasing."""

    def __init__(self, name: str, on_master: tuple[tuple[str, ...], ...], on_backup: tuple[tuple[str, ...], ...],
                 env: dict[str, str] | None = None) -> None:
        self.name = f"commands of {name}"
        self.on_master, self.on_backup, self.env = on_master, on_backup, env

    async def acquire(self) -> None:
        """Each on_master command must succeed."""
        for argv in self.on_master:
            await run_command(argv, self.name, check=True)

    async def release(self) -> None:
        """Every on_backup command runs, even after one fails (the first failure is raised at the end)."""
        failed: Exception | None = None
        for argv in self.on_backup:
            try:
                await run_command(argv, self.name, check=True)
            except Exception as exc:  # keep releasing; report once
                failed = failed or exc
        if failed:
            raise failed


async def run_command(argv: tuple[str, ...], what: str, *, check: bool, timeout: float = COMMAND_TIMEOUT) -> int:
    """Run a command without a shell, log its output, return its status (raise if ``check`` and not 0)."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        log.error("failover: %s: cannot run %s: %s", what, argv[0], exc.strerror)
        if check:
            raise
        return -1
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.error("failover: %s: %s killed after %.0f s", what, argv[0], timeout)
        if check:
            raise RuntimeError(f"{argv[0]} timed out after {timeout:.0f} s") from None
        return -1
    text = out.decode(errors="replace").strip()
    if text:
        log.info("failover: %s: %s: %s", what, argv[0], text)
    if proc.returncode != 0:
        log.error("failover: %s: %s exited with %d", what, argv[0], proc.returncode)
        if check:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
    return proc.returncode


class ResourceGroup:
    """Acquire in order, release in reverse; one worker so the two never interleave.

    ``want(True/False)`` returns at once; the worker converges to the latest wish.
    On a failed acquire, what was taken is released and ``on_failure(reason)`` is called.
    """

    def __init__(self, resources: list[Resource], on_failure: Callable[[str], None],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.resources = resources
        self.on_failure = on_failure
        self.on_change = on_change
        self.held: list[Resource] = []
        self._want = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    def want(self, held: bool) -> None:
        """Ask for the group to be held (master) or released."""
        self._want = held
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work())

    async def settled(self, timeout: float = COMMAND_TIMEOUT + 5) -> None:
        """Wait until the group matches the latest wish."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def _work(self) -> None:
        while True:
            self._wake.clear()
            if self._want and len(self.held) < len(self.resources):
                resource = self.resources[len(self.held)]
                try:
                    await resource.acquire()
                except Exception as exc:  # any failure: roll back, report, and let the FSM go to Fault
                    reason = f"{resource.name}: {exc}"
                    log.error("failover: acquiring %s", reason)
                    self._want = False
                    await self._release_all()
                    self.on_failure(reason)
                    continue
                self.held.append(resource)
                log.info("failover: acquired %s", resource.name)
                self.on_change()
                continue
            if not self._want and self.held:
                await self._release_all()
                continue
            self._idle.set()
            await self._wake.wait()
            self._idle.clear()

    async def _release_all(self) -> None:
        """Release everything held, last acquired first, carrying on past failures."""
        while self.held:
            resource = self.held.pop()
            try:
                await resource.release()
                log.info("failover: released %s", resource.name)
            except Exception as exc:  # keep releasing the rest; the operator sees why
                log.error("failover: releasing %s: %s", resource.name, exc)
            self.on_change()

    async def close(self) -> None:
        """Stop the worker (after ``settled``)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
