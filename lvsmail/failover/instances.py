"""The director's failover: every VRRP instance of one director, what each tracks, and its status.

Each instance (``lvsmail.failover.runner``) moves a group of resources
(``lvsmail.failover.resources``) to whichever director is master. An instance
tracks its own interface, the interfaces it names (operationally up:
administratively up with carrier) and the services it names (at least one
real server up, as the health engine sees it). A failed track either forces
Fault or lowers the priority by its weight, as keepalived's
``track_interface`` / ``track_script`` weights do.

Services are tracked by being told: the director calls ``services_changed``
with the services a batch of health transitions changed, and only the
instances tracking one of them are re-evaluated. Links are read every
``track_interval`` (see ``_poll`` for why). Every address and link request
goes through one ``AddressBackend`` on the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Set
from dataclasses import fields

from lvsmail.failover.hooks import AddressBackend, FailoverHooks, FailoverOptions
from lvsmail.failover.runner import RETUNABLE, Runner, RunnerContext
from lvsmail.spec import ClusterSpec, FailoverSpec, VrrpInstanceSpec
from lvsmail.vrrp import announce
from lvsmail.vrrp.state import Track

log = logging.getLogger("lvsmail.failover")

#: A failed health check asks whether our own links are down; a link reading older than this is renewed.
LINK_FRESH = 0.05


class Failover:
    """Every VRRP instance of one director, their tracking, and their published status."""

    def __init__(self, spec: FailoverSpec, cluster: ClusterSpec, hooks: FailoverHooks | None = None,
                 options: FailoverOptions | None = None) -> None:
        self.spec = spec
        self.cluster = cluster
        self.hooks = hooks if hooks is not None else FailoverHooks()
        self.options = options if options is not None else FailoverOptions()
        self._own_net = self.options.net is None  # a socket we opened is ours to close
        self.net: AddressBackend = self.options.net if self.options.net is not None else _rtnl()
        # One set of announcement sockets for the director, opened when an instance starts.
        self._announcer = announce.Announcer() if self.options.announcer is None else None
        self.announcer = self.options.announcer or self._announcer.announce
        self.clock = self.options.clock
        self.runners: dict[str, Runner] = {}
        self._poller: asyncio.Task | None = None
        self._links: dict[str, bool] = {}  # the last reading of the link states
        self._links_read = float("-inf")  # when link states were last read (tracking poll or link_fault)
        self._links_unreadable = False  # link_fault's last read failed (logged once until one succeeds)
        self._stopped = False  # after stop(): the netlink socket may be closed while checks still run

    def context(self) -> RunnerContext:
        """What this failover's instances are given: its network, announcer, clock and hooks."""
        return RunnerContext(
            net=self.net, announcer=self.announcer, primary_address=self.primary_address,
            transport_factory=self.options.transport_factory, sync_role=self.hooks.sync_role,
            on_change=self.publish, on_takeover=self.hooks.on_takeover, on_role=self.hooks.on_role,
            prepare_announcer=self._announcer.prepare if self._announcer is not None else None,
            clock=self.clock, resource_retry=self.options.resource_retry)

    async def start(self) -> None:
        """Clear VIPs a killed predecessor left behind, start every instance, start reading the links."""
        for inst in self.spec.instances:
            await self._add(inst)
        self._poller = asyncio.create_task(self._poll(), name="failover-track")

    async def _add(self, inst: VrrpInstanceSpec) -> None:
        runner = Runner(inst, self.context())
        self.runners[inst.name] = runner
        if inst.priority != 255:
            try:
                await runner.vips.clear()  # we are not master yet: nothing of ours may be on the link
            except OSError as exc:
                log.error("failover: %s: cannot clear left-over VIPs: %s", inst.name, exc)
        self._note_links(self._link_states())
        self._track_services(runner)
        runner.retrack()
        await runner.try_start()

    async def update(self, spec: FailoverSpec, cluster: ClusterSpec) -> None:
        """Reload: keep unchanged instances, retune changed settings in place, restart the rest; retrack all."""
        self.cluster = cluster
        new = {i.name: i for i in spec.instances}
        for name in [n for n in self.runners if n not in new]:
            log.info("failover: %s removed by reload", name)
            await self.runners.pop(name).stop()
        for name, inst in new.items():
            old = self.runners.get(name)
            if old is None:
                log.info("failover: %s added by reload", name)
                await self._add(inst)
            elif old.spec == inst:
                continue
            elif all(getattr(old.spec, f) == getattr(inst, f) for f in _fields(inst) if f not in RETUNABLE) \
                    and (old.spec.priority == 255) == (inst.priority == 255):
                log.info("failover: %s retuned by reload", name)
                old.retune(inst)
            else:
                log.info("failover: %s changed by reload: restarting it", name)
                await self.runners.pop(name).stop()
                await self._add(inst)
        self.spec = spec
        # The reload changed the cluster (services, their real servers: the health view) and maybe the
        # track lists: every instance is evaluated again against the last link reading.
        for runner in self.runners.values():
            runner.link_track = _link_track(runner.spec, self._links)
            self._track_services(runner)
            runner.retrack()
        self.publish()

    async def stop(self) -> None:
        """Graceful shutdown: every master advertises priority 0 and releases its group."""
        self._stopped = True
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
        self.publish()
        if self._announcer is not None:
            self._announcer.close()
        if self._own_net:
            self.net.close()

    def services_changed(self, names: Set[str]) -> None:
        """The health of these services changed (a batch of transitions, or members that joined or left):
        evaluate again only the instances that track one of them."""
        for runner in list(self.runners.values()):
            if any(t.name in names for t in runner.spec.track_services):
                self._track_services(runner)
                runner.retrack()

    def primary_address(self, spec: VrrpInstanceSpec) -> str:
        """The interface's own address the adverts come from: its first non-VIP IPv4, or its IPv6 link-local."""
        vips = {str(ipaddress.ip_interface(c).ip) for i in self.spec.instances for c in i.vips}
        for cidr in self.net.addresses(spec.interface):
            ip = ipaddress.ip_interface(cidr).ip
            if spec.family == "inet" and ip.version == 4 and str(ip) not in vips:
                return str(ip)
            if spec.family == "inet6" and ip.version == 6 and ip.is_link_local:
                return str(ip)
        kind = "IPv4 address" if spec.family == "inet" else "IPv6 link-local address"
        raise LookupError(f"{spec.interface} has no {kind} of its own to send adverts from")

    def _link_states(self) -> dict[str, bool]:
        try:
            return self.net.link_states()
        except OSError as exc:
            log.error("failover: cannot read link states: %s", exc)
            return {}

    async def _poll(self) -> None:
        """Read the links, re-evaluate what depends on them, and retry instances that could not start.

        Polled every ``track_interval`` because nothing tells us: the director
        subscribes to no rtnetlink group (RTNLGRP_LINK), so a carrier loss is
        seen here, at most one interval late. The same pass retries the
        instances that could not start (no address on the interface yet, an
        unreadable key file), which no event announces either.
        """
        while True:
            await asyncio.sleep(self.options.track_interval)
            self._note_links(self._link_states())
            for runner in list(self.runners.values()):
                runner.retrack()
                if runner.instance is None:
                    await runner.try_start()

    def _track_services(self, runner: Runner) -> None:
        """The services half of one instance's tracking, from the health view (``hooks.service_up``)."""
        penalty, faults = 0, set()
        known = {s.name for s in self.cluster.services}
        for t in runner.spec.track_services:
            if t.name not in known:
                down = f"tracked service {t.name} is not in the cluster file"
            elif self.hooks.service_up(t.name) is False:
                down = f"no real server of service {t.name} is up"
            else:
                continue  # some server up, or the service is not checked (nothing says it is down)
            if t.weight:
                penalty += t.weight
            else:
                faults.add(down)
        runner.service_track = Track(penalty=penalty, faults=frozenset(faults))

    def link_fault(self) -> str | None:
        """Why this director serves no VIP at all because its own links are down, or None.

        Only when every instance is in fault for an interface (its own, or one
        tracked without a weight): the peer then holds every VIP, and this
        director's table carries no traffic until a link returns. The health
        engine asks on a failed check, so that checks failing only because our
        links are down do not empty the table the director takes back on
        failback. The answer must not lag the link: a check can fail within
        the first moment of an outage, before the next tracking poll, so the
        link states are read afresh when the last reading is older than
        ``LINK_FRESH``. Once stopped (the director exits; its checks wind down
        after failover, whose socket is then closed) it holds nothing.
        """
        if self._stopped:
            return None
        if self.clock() - self._links_read > LINK_FRESH:
            try:
                links = self.net.link_states()
            except OSError as exc:
                # Asked on every failed check: say it once, and try again after LINK_FRESH, not per check.
                if not self._links_unreadable:
                    log.error("failover: cannot read link states (the last reading stands): %s", exc)
                self._links_unreadable = True
                self._links_read = self.clock()
            else:
                if self._links_unreadable:
                    log.warning("failover: link states can be read again")
                self._links_unreadable = False
                self._note_links(links)
        faults = [r.link_faults for r in self.runners.values()]
        if not faults or not all(faults):
            return None
        return "; ".join(sorted(frozenset().union(*faults)))

    def _note_links(self, links: dict[str, bool]) -> None:
        """Keep a link reading, and each instance's links half of its tracking (fed on its next retrack).

        A reading that failed is empty: every link counts as down, but ``link_fault`` reads again."""
        self._links = links
        if links:
            self._links_read = self.clock()
        for runner in self.runners.values():
            runner.link_track = _link_track(runner.spec, links)

    def roles(self) -> dict[str, str]:
        """Each instance's role now (``init`` before its state machine runs)."""
        return {name: runner.role for name, runner in list(self.runners.items())}

    def status(self, *, peers: bool = False) -> dict:
        """Every instance's role, priority, master, since, transitions, faults.

        With ``peers``, each instance also says what this director knows of the
        other one: the master's address from its advertisements when we are
        backup, the configured unicast peers when we are master (a backup does
        not advertise, RFC 5798 section 6.4.2).
        """
        now_wall, now_mono = time.time(), self.clock()
        instances = []
        for runner in list(self.runners.values()):
            inst = runner.status(now_wall, now_mono)
            if peers:
                if inst["role"] != "master" and inst.get("master"):
                    inst["peer"] = inst["master"]
                else:
                    inst["peer"] = ", ".join(runner.spec.unicast_peers) or None
            instances.append(inst)
        return {"cluster": self.cluster.name, "written": now_wall, "instances": instances}

    def publish(self) -> None:
        """Hand the status to ``hooks.publish`` (on every transition and resource change)."""
        self.hooks.publish(self.status())


def _link_track(spec: VrrpInstanceSpec, links: dict[str, bool]) -> Track:
    """The links half of an instance's tracking: its interface, or one tracked without a weight, down is a
    fault (FAULT); a weighted tracked interface down only lowers the priority by its weight."""
    faults = set()
    if not links.get(spec.interface, False):
        faults.add(f"interface {spec.interface} down")
    faults.update(f"tracked interface {t.name} down" for t in spec.track_interfaces
                  if not t.weight and not links.get(t.name, False))
    penalty = sum(t.weight for t in spec.track_interfaces if t.weight and not links.get(t.name, False))
    return Track(penalty=penalty, faults=frozenset(faults))


def _fields(spec: VrrpInstanceSpec) -> list[str]:
    return [f.name for f in fields(spec)]


def _rtnl() -> AddressBackend:
    """The director's own rtnetlink socket, in the namespace of the thread that opens it."""
    from lvsmail.net.iproute import RtnlAddresses

    return RtnlAddresses()
