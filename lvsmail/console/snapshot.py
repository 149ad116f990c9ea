"""What a running director knows, as plain data: the answer to the local API's ``status`` request.

It reads the director through its view (lvsmail.console.view: the effective
spec, the health states, the operator overrides, the VRRP instances, the sync
role) and one dump of the kernel's table with counters, so weights, connection
counts and rates are the kernel's, not what the director believes it
programmed.

Every real server gets one ``health`` word, the badge the dashboard shows:
``up``; ``down`` (out of the table); ``quiescent`` (down, left at weight 0 so
its sessions finish); ``draining`` (an operator drain, or a joined member
that drained itself); ``fallback`` (the service's fallback server, in the
table because nothing else is up); ``unchecked`` (no check: always in).
"""

from __future__ import annotations

import os
import time

from lvsmail.console import status as fmt
from lvsmail.console.status import _age
from lvsmail.console.view import DirectorView
from lvsmail.ipvs.desired import service_key
from lvsmail.ipvs.model import DestKey, Table, hostport

#: Events included in a status answer unless asked otherwise.
EVENTS = 20


def service_stats(c) -> dict:
    """Kernel counters of a service or real server: totals and the kernel's rate estimates."""
    return {"conns": c.conns, "inpkts": c.inpkts, "outpkts": c.outpkts, "inbytes": c.inbytes,
            "outbytes": c.outbytes, "cps": c.cps, "inbps": c.inbps, "outbps": c.outbps}


async def snapshot(view: DirectorView, events: int = EVENTS, table: Table | None = None, only: str = "",
                   hub=None) -> dict:
    """Everything ``status`` and the dashboard show, from a running director.

    ``only``: just the services whose name contains this text (the dashboard's
    filter; with a thousand real servers the whole answer is about 600 kB).
    ``hub``: the event hub whose last ``events`` events are included (none without).
    """
    if table is None:
        table = await view.table(counters=True)
    spec = view.effective()
    now_wall, now_mono = time.time(), view.clock()
    states = view.health()
    overrides = view.overrides
    joined = {(e["name"], e["address"], e["port"]): e for e in view.joined()}
    services = []
    for svc in spec.services:
        if only and only.lower() not in svc.name.lower():
            continue
        key = service_key(svc)
        entry = table.get(key)
        rows = []
        for rs in svc.realservers:
            k = (svc.name, rs.address, rs.port)
            dest = entry.dests.get(DestKey(rs.address, rs.port)) if entry else None
            st = states.get(k)
            o = overrides.get(k)
            j = joined.get(k)
            rows.append({
                "name": rs.name, "label": rs.name or hostport(rs.address, rs.port), "address": rs.address,
                "port": rs.port,
                "forwarding": rs.forwarding, "member": "joined" if j else "static",
                "member_name": j.get("member_name") if j else None,
                "health": _badge(st, dest, o, j),
                "up": None if st is None else st.up, "checked": st is not None and st.checked,
                "check": (svc.check.type if svc.check else "on") if st is not None else None,
                "since": None if st is None else now_wall - (now_mono - st.since),
                "latency": None if st is None else st.last_latency,
                "last_failure": None if st is None or not st.last_failure else st.last_failure,
                "last_failure_at": None if st is None or st.last_failure_at is None
                else now_wall - (now_mono - st.last_failure_at),
                "checks": 0 if st is None else st.checks, "transitions": 0 if st is None else st.transitions,
                "configured_weight": rs.weight,
                "effective_weight": None if dest is None else dest.settings.weight,
                "override": None if o is None else {"mode": o.mode, "weight": o.weight, "since": o.since},
                "in_kernel": dest is not None,
                "active": dest.active if dest else 0, "inactive": dest.inactive if dest else 0,
                "persistent": dest.persistent if dest else 0,
                "stats": service_stats(dest.counters) if dest else None,
            })
        fb = svc.fallback
        if fb is not None and entry is not None and DestKey(fb.address, fb.port) in entry.dests:
            dest = entry.dests[DestKey(fb.address, fb.port)]
            rows.append({
                "name": fb.name, "label": fb.name or hostport(fb.address, fb.port), "address": fb.address,
                "port": fb.port,
                "forwarding": fb.forwarding, "member": "fallback", "member_name": None, "health": "fallback",
                "up": None, "checked": False, "check": None, "since": None, "latency": None, "last_failure": None,
                "last_failure_at": None, "checks": 0, "transitions": 0, "configured_weight": fb.weight,
                "effective_weight": dest.settings.weight, "override": None, "in_kernel": True,
                "active": dest.active, "inactive": dest.inactive, "persistent": dest.persistent,
                "stats": service_stats(dest.counters),
            })
        services.append({
            "name": svc.name, "key": str(key), "family": svc.family, "vip": svc.vip, "protocol": svc.protocol,
            "port": svc.port, "fwmark": svc.fwmark, "scheduler": svc.scheduler, "persistent": svc.persistent,
            "netmask": svc.netmask or None, "forwarding": svc.forwarding, "quiescent": svc.quiescent,
            "in_kernel": entry is not None,
            "stats": service_stats(entry.counters) if entry else None,
            "healthy": sum(1 for r in rows if r["health"] in ("up", "unchecked", "draining")),
            "realservers": rows,
        })
    return {
        "cluster": view.spec().name, "config": str(view.config_path), "pid": os.getpid(), "at": now_wall,
        "services": services,
        "failover": view.failover(),
        "sync": await _sync(view),
        "kernel": _kernel_profile(view),
        "events": hub.last(events) if hub is not None else [],
    }


def _badge(st, dest, override, joined) -> str:
    """The one word the dashboard shows for a real server (see the module docstring)."""
    if st is not None and not st.up:
        return "quiescent" if dest is not None else "down"
    if (override is not None and override.mode == "drain") or (joined is not None and joined.get("drained")):
        return "draining"
    return "up" if st is not None else "unchecked"


async def _sync(view: DirectorView) -> dict | None:
    """The sync daemon role (configured, current, errors) and the kernel's running daemons."""
    role = view.sync_role()
    try:
        daemons = await view.daemons()
        running = [{"state": d.state, "interface": d.interface, "syncid": d.syncid} for d in daemons]
        error = None
    except Exception as exc:  # the sync daemons are informative here: say why they are missing
        running, error = [], str(exc)
    if role is None and not running and error is None:
        return None
    return {"role": role, "daemons": running, "error": error}


def _kernel_profile(view: DirectorView) -> dict:
    """The kernel profile's sysctls with their values and whether they are as the file wants."""
    want, rows = view.kernel_profile()
    rows = rows if want else []
    return {"sysctls": [r.as_json() for r in rows], "ok": all(r.ok for r in rows)}


async def table_status(view: DirectorView, table: Table, mine: bool = False) -> dict:
    """``director status`` as the kernel-and-files reading prints it, from the director's own state.

    The same formatters (lvsmail.console.status) and so the same JSON fields
    and text layout as without a running director, so scripts read both alike:
    ``json`` (services, timeouts, kernel, sync, failover) and ``text``.
    """
    spec = view.effective()
    if mine:  # only this director's services (``status -c FILE``)
        keys = {service_key(svc) for svc in spec.services}
        table = {k: v for k, v in table.items() if k in keys}
    now_wall, now_mono = time.time(), view.clock()
    states = view.health()
    health: dict = {}
    for svc in spec.services:  # the entries of the health file a director publishes, for the same formatter
        for rs in svc.realservers:
            st = states.get((svc.name, rs.address, rs.port))
            if st is None:
                continue
            check = svc.check
            health[(str(service_key(svc)), rs.address, rs.port)] = {
                "service": str(service_key(svc)), "name": svc.name, "address": rs.address, "port": rs.port,
                "check": check.type if check else "on", "up": st.up, "since": now_wall - (now_mono - st.since),
                "latency": st.last_latency, "last_failure": st.last_failure, "checks": st.checks,
                "transitions": st.transitions, "weight": rs.weight, "quiescent": svc.quiescent,
                "verify": check.verify if check else True}
    joined = {(e["service"], e["address"], e["port"]): e for e in view.joined()}
    timeouts = await view.timeouts()
    try:
        daemons = await view.daemons()
    except Exception:  # shown as "no sync daemon"; the snapshot's sync part carries the error
        daemons = []
    want, rows = view.kernel_profile()
    profiles = [{"cluster": view.spec().name, "wanted": want, "sync": view.sync_role()}]
    failover = view.failover()
    # as the failover file publishes it: without the snapshot's ``peer``
    published = [dict(failover, instances=[{k: v for k, v in inst.items() if k != "peer"}
                                           for inst in failover["instances"]])] if failover is not None else []
    data = fmt.as_json(table, timeouts, health, joined)
    data.update(fmt.profile_json(rows, daemons, profiles))
    data["failover"] = fmt.failover_json(published)
    text = [fmt.as_text(table, timeouts, health, joined), fmt.profile_text(rows, daemons, profiles)]
    if published:
        text.append(fmt.failover_text(published))
    return {"json": data, "text": "\n".join(text)}


def status_text(snap: dict, extras_only: bool = False) -> str:
    """A running director's status for people: services and real servers with their health lines,
    then VRRP, connection sync, kernel profile and the last events.

    ``extras_only``: only what the kernel-table view lacks (operator
    overrides and the last events), to follow that view.
    """
    now = snap["at"]
    lines = [f"Director {snap['cluster']} (pid {snap['pid']}, {snap['config']}), through its local API"]
    if extras_only:
        for svc in snap["services"]:
            for rs in svc["realservers"]:
                o = rs["override"]
                if o:
                    lines.append(f"  operator {o['mode']} of {svc['name']} {hostport(rs['address'], rs['port'])}"
                                 f" (weight {o['weight']}) for {_age(now - o['since'])}: {rs['health']},"
                                 f" {rs['active']} active")
        if len(lines) == 1:
            lines.append("  no operator overrides")
        lines += _event_lines(snap)
        return "\n".join(lines)
    lines.append(f"{'Service / RemoteAddress:Port':<40} {'Health':<10} {'Weight':>9} {'Active':>6} {'InAct':>6}"
                 f" {'Conns':>8} {'CPS':>5}")
    for svc in snap["services"]:
        where = f"FWM {svc['fwmark']}" if svc["fwmark"] is not None else \
            f"{svc['protocol'].upper()} {hostport(svc['vip'], svc['port'])}"
        head = f"{svc['name']} {where} {svc['scheduler']}"
        if svc["persistent"]:
            head += f" persistent {svc['persistent']}"
        st = svc["stats"] or {"conns": 0, "cps": 0}
        note = "" if svc["in_kernel"] else "  NOT IN KERNEL"
        lines.append(f"{head:<40} {'':<10} {'':>9} {'':>6} {'':>6} {st['conns']:>8} {st['cps']:>5}{note}")
        for rs in svc["realservers"]:
            label = hostport(rs["address"], rs["port"]) + (f" ({rs['name']})" if rs.get("name") else "")
            eff = "-" if rs["effective_weight"] is None else rs["effective_weight"]
            rst = rs["stats"] or {"conns": 0, "cps": 0}
            lines.append(f"  -> {label:<35} {rs['health']:<10} {str(rs['configured_weight']) + '/' + str(eff):>9}"
                         f" {rs['active']:>6} {rs['inactive']:>6} {rst['conns']:>8} {rst['cps']:>5}")
            detail = []
            if rs["since"] is not None:
                detail.append(f"{'up' if rs['up'] else 'down'} for {_age(now - rs['since'])}")
            if rs["check"]:
                lat = "-" if rs["latency"] is None else f"{rs['latency'] * 1000:.0f} ms"
                detail.append(f"{rs['check']} check {lat}")
            if rs["member"] != "static":
                detail.append(rs["member"] + (f" as {rs['member_name']}" if rs.get("member_name") else ""))
            if rs["override"]:
                o = rs["override"]
                detail.append(f"operator {o['mode']} (weight {o['weight']}) for {_age(now - o['since'])}")
            if detail:
                lines.append("       " + ", ".join(detail))
            if rs["last_failure"]:
                lines.append(f"       last failure: {rs['last_failure']}")
    fo = snap.get("failover")
    if fo:
        lines.append("Failover (VRRPv3):")
        for inst in fo["instances"]:
            since = "-" if inst.get("since") is None else _age(now - inst["since"])
            lines.append(f"  {inst['name']} VRID {inst['vrid']} on {inst['interface']}: {inst['role'].upper()} for"
                         f" {since}, priority {inst['priority']}, master {inst['master'] or '-'},"
                         f" {inst['transitions']} transitions")
            lines += [f"     fault: {f}" for f in inst.get("faults") or []]
    sync = snap.get("sync")
    if sync:
        lines.append("Connection sync:")
        r = sync.get("role")
        if r:
            err = f", last error: {r['last_error']}" if r.get("last_error") else ""
            lines.append(f"  role {r['role']} (configured {r['configured_role']}) on {r['interface']}"
                         f" syncid {r['syncid']}{err}")
        for d in sync["daemons"]:
            lines.append(f"  kernel daemon {d['state']} on {d['interface']} syncid {d['syncid']}")
        if sync.get("error"):
            lines.append(f"  cannot read the kernel's sync daemons: {sync['error']}")
    if snap["kernel"]["sysctls"]:
        lines.append("Kernel profile: " + ("ok" if snap["kernel"]["ok"] else "WRONG: " + ", ".join(
            f"{r['key']}={r['value']} (wants {r['wanted']})" for r in snap["kernel"]["sysctls"] if not r["ok"])))
    lines += _event_lines(snap)
    return "\n".join(lines)


def _event_lines(snap: dict) -> list[str]:
    if not snap["events"]:
        return []
    return ["Last events:"] + [f"  {time.strftime('%H:%M:%S', time.localtime(e['at']))} {e['kind']:<8} {e['text']}"
                               for e in snap["events"]]
