"""The chaos run's report: Message-ID accounting, per-fault recovery, held sessions, availability, plot.

Definitions used in the report:

* **accepted**: the server answered 250 to the end of DATA (RFC 5321 §4.1.1.4).
* **lost**: accepted, yet not in any Maildir once every queue was flushed.
  Each lost or duplicated message names the fault in whose window (its
  injection to the next one's) the client saw it accepted.
* **duplicate**: one Message-ID in the Maildirs more than once. It is
  *explained* when that message had an ambiguous attempt (the final dot sent,
  the connection lost before the reply): the server had accepted it, the
  client could not know and retried, as RFC 5321 §6.1 and RFC 1047 describe.
* **recovery** of a fault: from its injection to the start of the last
  failed session (SMTP or IMAP) before the next fault — the time until new
  sessions succeeded again; 0 when no client noticed the fault.
* **availability**: the seed's model (lvsmail.console.availability) with the
  failover times observed here in place of the seed's: the director layer's
  MTFO is the mean recovery of director takeovers (kill, link down), the
  real-server layer's the mean recovery of real-server faults. Storage is a
  local directory in the lab, so the seed's own storage MTFO is kept.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

from lvsmail.lab.chaos.schedule import DIRECTOR_KINDS, REALSERVER_KINDS


def _failures_between(events, t0: float, t1: float) -> list:
    return [e for e in events if not e.ok and t0 <= e.start < t1]


def fault_window(records, t: float | None, end: float) -> dict:
    """The fault in whose window (its injection to the next one's) time ``t`` falls, for pinning a lost or
    duplicated message on the fault that caused it; before the first or after the last window, says so."""
    if t is None:
        return {"fault": None, "kind": "never accepted"}
    if t >= end:
        return {"fault": None, "kind": "after the faults"}
    during = [r for r in records if r.injected <= t]
    if not during:
        return {"fault": None, "kind": "before the first fault"}
    return {"fault": during[-1].spec.index, "kind": during[-1].spec.kind}


def build_report(*, seed, duration, mode, realservers, faults, records, clients, held, found, start, end,
                 queues_left, unaccepted, setup_seconds) -> dict:
    """Everything the run observed, as one JSON-ready dictionary."""
    from lvsmail.console import availability as av

    with clients.lock:
        events = list(clients.events)
        messages = list(clients.messages)
    # -- faults ---------------------------------------------------------------------------------
    fault_rows = []
    # A fault's window runs to the next injection; the last one's to the end of the faults. The drain
    # after it (senders' final retries on a machine that may be loaded) belongs to no fault: it was
    # counted against the last fault's recovery before, inflating it by minutes.
    bounds = [r.injected for r in records[1:]] + [max(end, records[-1].injected)] if records else []
    for rec, until in zip(records, bounds):
        failed = _failures_between(events, rec.injected, until)
        recovery = (max(e.start for e in failed) - rec.injected) if failed else 0.0
        fault_rows.append({
            "index": rec.spec.index, "kind": rec.spec.kind, "target": rec.target,
            "description": rec.spec.description, "planned_at": rec.spec.at, "hold": rec.spec.hold,
            "injected_at": round(rec.injected - start, 2), "healed_at": round(rec.healed - start, 2),
            "recovered_at": round(rec.recovered - start, 2) if rec.recovered else None,
            "recovered": bool(rec.recovered),
            "recovery_s": round(recovery, 2),
            "failed_sessions": {p: sum(1 for e in failed if e.proto == p) for p in ("smtp", "imap")},
            "failure_reasons": dict(Counter(e.error.split(":")[0] for e in failed).most_common(5)),
            "held_sessions_open": len(rec.held_open), "held_sessions_survived": len(rec.held_survived),
            "notes": rec.notes,
        })
    # -- messages -------------------------------------------------------------------------------
    accepted = [m for m in messages if m.accepted_at is not None]
    copies = {mid: len(boxes) for mid, boxes in found.items()}
    lost = [m.mid for m in accepted if copies.get(m.mid, 0) == 0]
    lost_detail = [{"message_id": m.mid, "accepted_at": round(m.accepted_at - start, 2), "accepted_by": m.accepted_by,
                    **fault_window(records, m.accepted_at, end)} for m in accepted if copies.get(m.mid, 0) == 0]
    duplicates, unexplained = [], []
    for m in messages:
        n = copies.get(m.mid, 0)
        if n > 1:
            row = {"message_id": m.mid, "copies": n, "attempts": m.attempts, "ambiguous_attempts": m.ambiguous,
                   **fault_window(records, m.accepted_at, end),
                   "explanation": (f"{m.ambiguous} attempt(s) lost the connection after the final dot; the server "
                                   "had accepted, the client retried (RFC 5321 §6.1 at-least-once)")
                   if m.ambiguous else "unexplained: no ambiguous attempt"}
            duplicates.append(row)
            if not m.ambiguous:
                unexplained.append(m.mid)
    ours = {m.mid for m in messages}
    strangers = sorted(mid for mid in found if mid not in ours)
    # -- sessions -------------------------------------------------------------------------------
    totals = {p: {"ok": sum(1 for e in events if e.proto == p and e.ok),
                  "failed": sum(1 for e in events if e.proto == p and not e.ok)} for p in ("smtp", "imap")}
    # -- availability ---------------------------------------------------------------------------
    takeovers = [r["recovery_s"] for r in fault_rows if r["kind"] in ("director_kill", "director_link")]
    rs_faults = [r["recovery_s"] for r in fault_rows if r["kind"] in REALSERVER_KINDS]
    layers = []
    for seed_layer in av.SEED_LAYERS:
        observed = {"directors": takeovers, "realservers": rs_faults}.get(seed_layer.name)
        if observed:
            layers.append(av.LayerInput(seed_layer.name, seed_layer.nodes, seed_layer.mode,
                                        seed_layer.node_availability, seed_layer.mtbf_hours,
                                        statistics.mean(observed), f"lab chaos, mean of {len(observed)}"))
        else:
            layers.append(seed_layer)
    ours_av = av.evaluate(layers)
    seed_av = av.seed()
    held_rows = [r for r in fault_rows if r["kind"] in DIRECTOR_KINDS]
    report = {
        "seed": seed, "duration": duration, "mode": mode, "realservers": realservers,
        "setup_seconds": round(setup_seconds, 1), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
        "faults_planned": len(faults), "faults": fault_rows,
        "sessions": totals,
        "held_sessions_across_takeovers": {
            "open": sum(r["held_sessions_open"] for r in held_rows),
            "survived": sum(r["held_sessions_survived"] for r in held_rows),
            "opened_in_run": len(held.sessions), "failures": dict(held.failures)},
        "messages": {
            "created": len(messages), "accepted": len(accepted), "never_accepted": unaccepted,
            "attempts": sum(m.attempts for m in messages), "ambiguous_attempts": sum(m.ambiguous for m in messages),
            "found_in_maildirs": sum(copies.get(m.mid, 0) for m in messages),
            "lost": lost, "lost_detail": lost_detail, "duplicates": duplicates, "unexplained_duplicates": unexplained,
            "not_from_this_run": strangers, "queues_left": queues_left},
        "availability": {
            "observed_mtfo_s": {"directors": takeovers, "realservers": rs_faults},
            "ours": av.as_json(ours_av), "ours_percent": round(ours_av.availability * 100, 5),
            "seed_percent": av.SEED_TOTAL_PERCENT, "seed_model_percent": round(seed_av.availability * 100, 5)},
        "series": sessions_per_second(events, start, end),
    }
    report["ok"] = not lost and not unexplained and all(r["recovered"] for r in fault_rows)
    return report


def sessions_per_second(events, start: float, end: float) -> dict:
    """Successful SMTP and IMAP sessions and failed ones, per second of the run (by session start)."""
    n = max(1, int(end - start) + 1)
    series = {"smtp_ok": [0] * n, "imap_ok": [0] * n, "failed": [0] * n}
    for e in events:
        i = int(e.start - start)
        if 0 <= i < n:
            series["failed" if not e.ok else f"{e.proto}_ok"][i] += 1
    return series


def plot(report: dict, clients, path) -> str | None:
    """Sessions per second with every fault marked; the file's path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report.setdefault("notes", []).append("no plot: matplotlib is not installed (pip install 'lvsmail[lab]')")
        return None
    s = report["series"]
    xs = list(range(len(s["smtp_ok"])))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.plot(xs, s["smtp_ok"], label="SMTP sessions ok/s", linewidth=1)
    ax.plot(xs, s["imap_ok"], label="IMAP sessions ok/s", linewidth=1)
    ax.plot(xs, s["failed"], label="failed sessions/s", linewidth=1, color="red")
    top = max([1, *s["smtp_ok"], *s["imap_ok"], *s["failed"]])
    for i, f in enumerate(report["faults"]):
        ax.axvspan(f["injected_at"], f["healed_at"], color="orange", alpha=0.2)
        ax.text(f["injected_at"], top * (0.95 - 0.08 * (i % 4)), f"{f['index']} {f['kind']} {f['target']}",
                fontsize=7, rotation=0)
    ax.set_xlabel("seconds since the clients started")
    ax.set_ylabel("sessions per second")
    ax.set_title(f"lvsmail lab chaos, seed {report['seed']}: {report['messages']['accepted']} accepted, "
                 f"{len(report['messages']['lost'])} lost")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def text_summary(report: dict) -> str:
    """The closing note: per-fault recovery, sessions, accounting, availability."""
    m = report["messages"]
    lines = [f"\nchaos seed {report['seed']}, {report['duration']:.0f} s, mode {report['mode']}, "
             f"{report['realservers']} real servers (+1 spare); setup {report['setup_seconds']:.0f} s", "",
             f"{'#':>2} {'fault':<15}{'target':<20}{'at s':>7}{'hold':>6}{'recovery s':>11}{'failed':>8}"
             f"{'held ok':>9}  after heal"]
    for f in report["faults"]:
        held = f"{f['held_sessions_survived']}/{f['held_sessions_open']}" if f["kind"] in DIRECTOR_KINDS else "-"
        after = (f"{f['recovered_at'] - f['healed_at']:.1f} s" if f["recovered"] else "NOT RECOVERED")
        failed = f["failed_sessions"]["smtp"] + f["failed_sessions"]["imap"]
        lines.append(f"{f['index']:>2} {f['kind']:<15}{f['target']:<20}{f['injected_at']:>7.1f}{f['hold']:>6.1f}"
                     f"{f['recovery_s']:>11.1f}{failed:>8}{held:>9}  {after}")
    s = report["sessions"]
    h = report["held_sessions_across_takeovers"]
    a = report["availability"]
    lines += ["", f"sessions: SMTP {s['smtp']['ok']} ok / {s['smtp']['failed']} failed, IMAP {s['imap']['ok']} ok / "
                  f"{s['imap']['failed']} failed; held SMTP sessions across director faults: "
                  f"{h['survived']}/{h['open']}"
                  f" survived ({h['opened_in_run']} held sessions opened in the run"
                  + "".join(f"; {n}× {why}" for why, n in sorted(h["failures"].items())) + ")",
              f"messages: {m['created']} created, {m['accepted']} accepted (250 to DATA), {m['attempts']} attempts, "
              f"{m['ambiguous_attempts']} ambiguous; {m['found_in_maildirs']} copies in the Maildirs",
              f"lost: {len(m['lost'])}; duplicates: {len(m['duplicates'])} "
              f"({len(m['unexplained_duplicates'])} unexplained); never accepted: {m['never_accepted']}; "
              f"queues left: {m['queues_left'] or 'none'}",
              f"availability (seed model, observed MTFO directors {a['observed_mtfo_s']['directors'] or 'n/a'}, "
              f"real servers {a['observed_mtfo_s']['realservers'] or 'n/a'}): {a['ours_percent']:.5f} % "
              f"(seed: {a['seed_percent']} %)",
              f"result: {'PASS' if report['ok'] else 'FAIL'}"]
    for f in report.get("files", {}).items():
        lines.append(f"{f[0]}: {f[1]}")
    return "\n".join(lines)
