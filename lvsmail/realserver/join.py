"""``realserver join`` and ``leave``: from the cluster file to a plan of changes, applied with rollback.

join = derive what this address serves -> preflight (refuse with reasons, change
nothing) -> plan (network, persistence, mail stack, health page, storage marker,
registration) -> apply, recording each undo in the state file as it happens ->
reload the daemons whose configuration changed. A failure half-way undoes what
this run did. leave = the recorded undo changes, newest first: drain and deregister
before the VIP goes away, so established sessions finish.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lvsmail.net.backend import family_of
from lvsmail.net.realserver import TUNNEL, RealServerNetSpec, Step, host_cidr
from lvsmail.net.realserver import plan as net_plan
from lvsmail.realserver import mailstack, persist
from lvsmail.realserver.changes import (
    Change,
    ChangeError,
    JoinContext,
    JoinError,
    NetChange,
    Register,
    StorageMarker,
    Symlink,
    WriteFile,
    apply_changes,
    service_of,
    undo_changes,
)
from lvsmail.realserver.storage import MARKER, check_storage
from lvsmail.spec import ClusterSpec, RealServerDefaultsSpec
from lvsmail.statefiles import write_json

STATE_VERSION = persist.STATE_VERSION

#: Asks the LAN who has an IPv4 address: (interface, sender address, target address) -> answering MACs.
ArpProber = Callable[[str, str, str], list[str]]


@dataclass(frozen=True)
class Served:
    """One service this real server serves."""

    service: str
    forwarding: str
    vip: str | None
    port: int | None


@dataclass(frozen=True)
class Role:
    """What the cluster file makes of an address: the services it serves, and whether it is listed there."""

    address: str
    served: tuple[Served, ...]
    static: bool  # listed in the file's services (else it joins through registration)

    @property
    def services(self) -> tuple[str, ...]:
        """Service names."""
        return tuple(dict.fromkeys(s.service for s in self.served))


@dataclass(frozen=True)
class JoinOptions:
    """Where this real server keeps things (several instances may run side by side; tests use a temp root)."""

    address: str
    config_path: str = "/etc/lvsmail/cluster.yaml"
    paths: mailstack.MailPaths = field(default_factory=mailstack.MailPaths)
    root: str = "/"
    state_file: str | None = None
    interface: str | None = None
    command: tuple[str, ...] = ("lvsmail",)  # how the boot unit runs lvsmail
    extra_args: tuple[str, ...] = ()  # join options the boot unit must repeat
    weight: int = 1

    def under_root(self, path: str) -> str:
        """A default path placed under ``root``."""
        return str(Path(self.root) / path.lstrip("/"))


@dataclass
class Plan:
    """What a join would do: the changes, and notes and problems found on the way."""

    role: Role
    interface: str
    changes: list[Change]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class JoinResult:
    """What a join did."""

    applied: list[Change]
    undo: list[Change]
    notes: list[str]
    reloads: list[str]


# -- what this address serves ----------------------------------------------------------

def derive_role(spec: ClusterSpec, address: str) -> Role:
    """Services of ``address``: where the file lists it, else ``realserver.services`` (JoinError if neither)."""
    address = str(ipaddress.ip_address(address))
    served: list[Served] = []
    for svc in spec.services:
        for rs in svc.realservers:
            if rs.address == address:
                served.append(Served(svc.name, rs.forwarding, svc.vip, rs.port))
    if served:
        return Role(address, tuple(served), static=True)
    defaults = spec.realserver or RealServerDefaultsSpec()
    if not defaults.services:
        raise JoinError(f"{address} is not a real server of any service in {spec.source}, and the file's "
                        "realserver.services names no service a new real server may join")
    if spec.registration is None:
        raise JoinError(f"{address} is not listed in {spec.source}; joining unlisted real servers needs a "
                        "registration: section (the directors' API)")
    by_name = {s.name: s for s in spec.services}
    for name in defaults.services:
        svc = by_name.get(name)
        if svc is None:
            raise JoinError(f"realserver.services names {name!r}, which is not a service of {spec.source}")
        served.append(Served(svc.name, svc.forwarding, svc.vip, svc.port))
    return Role(address, tuple(served), static=False)


def net_specs(role: Role, spec: ClusterSpec, interface: str) -> list[RealServerNetSpec]:
    """One network spec per forwarding method this server uses (JoinError for contradictions)."""
    defaults = spec.realserver or RealServerDefaultsSpec()
    by_method: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for s in role.served:
        if s.vip is None and s.forwarding != "nat":
            raise JoinError(f"service {s.service} is a firewall-mark service: {s.forwarding} needs its VIPs on "
                            "this server, which a firewall mark does not name; list the VIP as its own service")
        if s.vip is not None and s.forwarding != "nat":
            if seen.get(s.vip, s.forwarding) != s.forwarding:
                raise JoinError(f"VIP {s.vip} is served by {seen[s.vip]} and by {s.forwarding}: a real server "
                                "holds a VIP either on lo (dr) or on tunl0 (tun), not both")
            seen[s.vip] = s.forwarding
            by_method.setdefault(s.forwarding, [])
            if s.vip not in by_method[s.forwarding]:
                by_method[s.forwarding].append(s.vip)
        elif s.forwarding == "nat":
            by_method.setdefault("nat", [])
    specs = []
    for method in ("tun", "dr"):
        if method in by_method:
            specs.append(RealServerNetSpec(method, tuple(by_method[method]), interface=interface))
    if "nat" in by_method:
        if defaults.nat_gateway is None:
            raise JoinError("this server serves a nat service: set realserver.nat_gateway in the cluster file "
                            "(the directors' inside address, its default route)")
        specs.append(RealServerNetSpec("nat", director=defaults.nat_gateway, interface=interface))
    return specs


def network_steps(specs: list[RealServerNetSpec]) -> list[Step]:
    """The network plans of every method, in order, each step once."""
    steps: list[Step] = []
    for s in specs:
        for step in net_plan(s):
            if step not in steps:
                steps.append(step)
    return steps


# -- preflight -------------------------------------------------------------------------

def find_interface(ctx: JoinContext, address: str) -> str | None:
    """The interface that holds ``address``."""
    want = ipaddress.ip_address(address)
    for link in ctx.net.net.link_names():
        for cidr in ctx.net.net.addresses(link):
            if ipaddress.ip_interface(cidr).ip == want:
                return link
    return None


def preflight_network(role: Role, spec: ClusterSpec, ctx: JoinContext, interface: str,
                      specs: list[RealServerNetSpec], prober: ArpProber | None) -> tuple[list[str], list[str]]:
    """Problems that must stop the join, and notes; reads only (an ARP request is the one packet sent)."""
    problems, notes = [], []
    net = ctx.net.net
    defaults = spec.realserver or RealServerDefaultsSpec()
    wanted_link = {}
    for s in specs:
        for vip in s.vips:
            wanted_link[vip] = TUNNEL[family_of(vip)][1] if s.forwarding == "tun" else "lo"
            if s.forwarding == "tun" and not ctx.net.modules.can_load(TUNNEL[family_of(vip)][0]):
                problems.append(f"the {TUNNEL[family_of(vip)][0]} kernel module is not available: TUN real servers "
                                f"decapsulate on {TUNNEL[family_of(vip)][1]} (install the kernel's modules package)")
    if role.address in wanted_link:
        problems.append(f"{role.address} is a VIP of this cluster; a real server needs its own address")
    for link in net.link_names():
        for cidr in net.addresses(link):
            ip = str(ipaddress.ip_interface(cidr).ip)
            if ip in wanted_link and link != wanted_link[ip]:
                problems.append(f"VIP {ip} is already on {link} as {cidr}: this host would answer ARP for it or "
                                f"route it wrongly; remove it (it belongs on {wanted_link[ip]} as {host_cidr(ip)})")
    for s in specs:
        if s.forwarding == "nat":
            gw = ipaddress.ip_address(s.director)
            onlink = [c for c in net.addresses(interface)
                      if gw in ipaddress.ip_interface(c).network and gw != ipaddress.ip_interface(c).ip]
            if not onlink:
                problems.append(f"NAT gateway {s.director} is not on a network of {interface} "
                                f"({', '.join(net.addresses(interface)) or 'no addresses'})")
    dr4 = [v for s in specs if s.forwarding == "dr" for v in s.vips if family_of(v) == "inet"]
    if dr4 and family_of(role.address) == "inet":
        if prober is None:
            notes.append("ARP check for the VIP skipped (needs root for a raw socket)")
        else:
            allowed: set[str] = set()
            for director in defaults.directors:
                if family_of(director) == "inet":
                    allowed.update(prober(interface, role.address, director))
            for vip in dr4:
                answers = prober(interface, role.address, vip)
                strangers = sorted(set(answers) - allowed)
                if strangers and (defaults.directors or len(answers) > 1):
                    problems.append(f"VIP {vip} is answered on {interface} by {', '.join(strangers)}, not by a "
                                    "director (realserver.directors): another host holds it or a real server "
                                    "answers ARP for it; clients would bypass the director")
                elif answers:
                    notes.append(f"VIP {vip}: ARP answered by {', '.join(answers)}"
                                 + (" (a director)" if not strangers else " (list realserver.directors to check "
                                                                           "that it is a director)"))
                else:
                    notes.append(f"VIP {vip}: no ARP answer on {interface}")
    return problems, notes


# -- the plan -------------------------------------------------------------------------

def unit_argv(opts: JoinOptions, state_file: str) -> list[str]:
    """The join command the boot unit runs: the same options as this join."""
    argv = [*opts.command, "realserver", "join", "-c", opts.config_path, "--address", opts.address,
            "--state-file", state_file, *opts.extra_args]
    return argv


def boot_unit_changes(spec: ClusterSpec, opts: JoinOptions, state_file: str) -> list[Change]:
    """The boot unit: the packaged one when installed (else the same text, written), this join's drop-in, enabled."""
    unit_dir = opts.under_root("/etc/systemd/system")
    storage_path = spec.mail.storage.path if spec.mail and spec.mail.storage else None
    changes: list[Change] = []
    installed = persist.vendor_unit(opts.root)
    if installed is None:  # a source install: no package put the unit in place
        changes.append(WriteFile(f"{unit_dir}/{persist.UNIT_NAME}", persist.unit_text(opts.command), 0o644,
                                 "systemd unit", reload="systemd"))
        installed = f"../{persist.UNIT_NAME}"
    changes.append(WriteFile(f"{unit_dir}/{persist.UNIT_NAME}.d/{persist.DROPIN_NAME}",
                             persist.dropin_text(unit_argv(opts, state_file), state_file, spec.name, storage_path),
                             0o644, "systemd drop-in", reload="systemd", make_parent=True))
    changes.append(Symlink(f"{unit_dir}/multi-user.target.wants/{persist.UNIT_NAME}", installed, "enable at boot"))
    return changes


def build_plan(spec: ClusterSpec, opts: JoinOptions, ctx: JoinContext, prober: ArpProber | None = None,
               *, owner_ids: Callable[[str], tuple[int, int]] | None = None,
               mountinfo: str | None = None) -> Plan:
    """Preflight and plan (reads only). ``plan.problems`` non-empty means: refuse."""
    from lvsmail.config.mail import mail_owner_ids

    owner_ids = owner_ids or mail_owner_ids
    role = derive_role(spec, opts.address)
    defaults = spec.realserver or RealServerDefaultsSpec()
    interface = opts.interface or defaults.interface or find_interface(ctx, role.address)
    if interface is None:
        raise JoinError(f"{role.address} is not configured on any interface of this host: is this the right "
                        "real server, or is the address still to be configured?")
    if not ctx.net.net.link_exists(interface):
        raise JoinError(f"interface {interface} does not exist")
    specs = net_specs(role, spec, interface)
    steps = network_steps(specs)
    problems, notes = preflight_network(role, spec, ctx, interface, specs, prober)
    changes: list[Change] = [NetChange(s) for s in steps]
    state_file = opts.state_file or opts.under_root(defaults.state_file)

    # persistence
    changes.append(WriteFile(opts.under_root(f"/etc/sysctl.d/{persist.SYSCTL_NAME}"),
                             persist.sysctl_dropin(steps, spec.name), 0o644, "sysctl drop-in"))
    modules = [m for m in dict.fromkeys(s.name for s in steps if s.op == "module")]
    if modules:
        changes.append(WriteFile(opts.under_root(f"/etc/modules-load.d/{persist.MODULES_NAME}"),
                                 persist.modules_load(modules), 0o644, "modules-load list"))
    changes += boot_unit_changes(spec, opts, state_file)

    # mail stack
    mail = spec.mail
    if mail is None:
        notes.append("no mail: section in the cluster file: the mail stack is left as it is")
    else:
        owner = None
        ids = None
        if mail.mailbox.layout == "virtual":
            owner = mail.mailbox.owner
            try:
                ids = owner_ids(owner)
            except KeyError as exc:
                problems.append(str(exc.args[0]))
        vips = tuple(dict.fromkeys(v for s in specs for v in s.vips))
        trusted = ()
        if any(s.forwarding == "nat" for s in specs):
            trusted = tuple(dict.fromkeys((defaults.nat_gateway, *defaults.directors)))
        try:
            queue = ctx.postconf.effective(opts.paths.postfix_dir, "queue_directory")
            changes += mailstack.postfix_changes(mail, opts.paths, ctx.postconf, vips=vips, address=role.address,
                                                 trusted=trusted, owner_ids=ids)
            if mail.storage is not None and _inside(queue, mail.storage.path):
                problems.append(f"Postfix's queue_directory {queue} is on the shared storage: every real server "
                                "must keep its own queue on local disk")
        except JoinError as exc:
            problems.append(str(exc))
        if mail.imap == "dovecot":
            changes += mailstack.dovecot_changes(mail, opts.paths, spec.name, ids)
        else:
            changes += mailstack.courier_changes(mail, opts.paths)
        if mail.tls is not None:
            for path in (mail.tls.cert, mail.tls.key):
                if not os.path.isfile(path):
                    problems.append(f"TLS file {path} (mail.tls) does not exist on this real server")
        if mail.health_page is not None:
            page = opts.under_root(mail.health_page.path)
            if not any(s.port in (80, 443) for s in role.served):
                notes.append(f"health page {page}: written although this server serves no HTTP service")
            if not os.path.isdir(os.path.dirname(page)):
                problems.append(f"the health page's directory {os.path.dirname(page)} does not exist "
                                "(is the web server installed?)")
            changes.append(WriteFile(page, mailstack.health_page_text(mail.health_page.text), 0o644, "health page"))
        if mail.storage is not None:
            writers = (((owner, *ids, mail.mailbox.root),) if owner and ids and mail.mailbox.root else ())
            st_problems, st_notes, marker = check_storage(mail.storage, spec.name, mountinfo=mountinfo,
                                                          writers=writers)
            problems += st_problems
            notes += st_notes
            if marker is not None:
                changes.append(StorageMarker(str(Path(mail.storage.path) / MARKER), marker))
    # registration, last: the directors send traffic only to a server that is ready
    if not role.static:
        changes.append(Register(role.address, role.services, opts.weight))
    return Plan(role, interface, changes, notes, problems)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def pending_changes(plan: Plan, ctx: JoinContext) -> list[Change]:
    """The changes that would do something now (read-only; a registration is asked of the directors)."""
    return [c for c in plan.changes if c.pending(ctx)]


# -- state file -----------------------------------------------------------------------

def read_state(path: str) -> dict | None:
    """The recorded join, or None when this host has not joined; a damaged file is a JoinError, nothing changed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise JoinError(f"state file {path} is unreadable ({exc}); nothing was changed") from None
    try:
        return persist.parse_state(text, path)
    except persist.StateFileError as exc:
        raise JoinError(f"{exc}; nothing was changed") from None


def write_state(path: str, data: dict) -> None:
    """Write atomically, root-only (it holds previous configuration values)."""
    out = dict(data, undo=[c.to_dict() for c in data["undo"]])
    write_json(path, out, indent=1, newline=True, mode=0o600)


# -- join / leave ----------------------------------------------------------------------

def join(spec: ClusterSpec, opts: JoinOptions, ctx: JoinContext, plan: Plan) -> JoinResult:
    """Apply a plan without problems; the state file records each undo as it happens."""
    if plan.problems:
        raise JoinError("refused:\n  " + "\n  ".join(plan.problems))
    defaults = spec.realserver or RealServerDefaultsSpec()
    state_file = opts.state_file or opts.under_root(defaults.state_file)
    old = read_state(state_file)
    if old is not None and old.get("address") != plan.role.address:
        raise JoinError(f"this host joined as {old.get('address')} ({state_file}); run leave first")
    previous = old["undo"] if old else []
    state = {"version": STATE_VERSION, "cluster": spec.name, "address": plan.role.address,
             "config": opts.config_path, "joined": (old or {}).get("joined", int(time.time())),
             "interface": plan.interface, "undo": list(previous)}
    applied: list[Change] = []
    fresh: list[Change] = []

    def record(change: Change, inverse: Change | None) -> None:
        if inverse is not None:
            applied.append(change)
            fresh.insert(0, inverse)
            # Deregister is kept once, first: a re-join must not drain twice on leave.
            undo = [c for c in fresh + previous]
            seen_dereg = False
            state["undo"] = []
            for c in undo:
                if c.op == "deregister":
                    if seen_dereg:
                        continue
                    seen_dereg = True
                state["undo"].append(c)
            state["undo"].sort(key=lambda c: c.op != "deregister")
            write_state(state_file, state)

    try:
        apply_changes(plan.changes, ctx, record)
    except ChangeError:
        # apply_changes undid this run's changes; the state file goes back to what it was.
        if old is None:
            _remove(state_file)
        else:
            write_state(state_file, old)
        raise
    if old is None and not os.path.exists(state_file):
        write_state(state_file, state)  # joined with nothing to change: still remember the join
    reloads = _reload(ctx, [c for c in applied if not isinstance(c, Register)])
    return JoinResult([c for c in applied if not isinstance(c, Register)], fresh, ctx.log, reloads)


def _reload(ctx: JoinContext, changed: list[Change]) -> list[str]:
    """Reload each daemon whose configuration changed, once."""
    out = []
    for service in dict.fromkeys(s for s in (service_of(c) for c in changed) if s):
        if ctx.reload is not None:
            out.append(ctx.reload(service))
    return out


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass
class LeaveResult:
    """What leave did, and what it could not undo."""

    undone: list[Change]
    errors: list[str]
    notes: list[str]
    reloads: list[str]


def leave(state_file: str, ctx: JoinContext, *, force: bool = False) -> LeaveResult:
    """Drain and deregister, then restore everything join changed; remove the state file when all is undone."""
    state = read_state(state_file)
    if state is None:
        raise JoinError(f"this host has not joined (no {state_file}); nothing to undo")
    undo: list[Change] = state["undo"]
    first = [c for c in undo if c.op == "deregister"]
    rest = [c for c in undo if c.op != "deregister"]
    for change in first:
        try:
            change.apply(ctx)
        except Exception as exc:
            if not force:
                raise JoinError(f"{change.describe()} failed: {exc}; nothing else was changed (the VIP stays, "
                                "so established sessions are safe). Fix it and run leave again, or --force") from exc
            ctx.log.append(f"{change.describe()} failed, going on (--force): {exc}")
    errors = undo_changes(rest, ctx)
    if errors:
        failed = {e.split(": ", 1)[0] for e in errors}
        state["undo"] = [c for c in rest if c.describe() in failed]
        write_state(state_file, state)
    else:
        _remove(state_file)
    reloads = _reload(ctx, rest)
    return LeaveResult(undo, errors, ctx.log, reloads)
