"""Chaos reports of several director stacks side by side: one table, one plot, lvsmail's ratio to each anchor.

Each stack (lvsmail, the seed's heartbeat + ldirectord, keepalived) ran the same
seeded fault schedule in its own ``lvsmail lab chaos --stack`` run; this module
only reads their JSON reports, so a comparison can be redone from saved files.

What is compared, per fault kind and stack:

* **time until new sessions succeed again**: the report's ``recovery_s`` of each
  occurrence (from the injection to the start of the last failed SMTP or IMAP
  session before the next fault; 0 when no client noticed), as min / median /
  max. It is what a client sees. Reports without it fall back to the time the
  cluster took to be whole again after healing, and the heading says so.
* **held sessions survived** (director faults only: the report counts held
  sessions at director faults), and **sessions failed** (SMTP + IMAP).
* **n/a with its reason** where the stack's report lists the kind under
  ``not_applicable``; "not run" where its schedule simply had none.

Per stack: messages accepted, lost and duplicated, and the availability of the
seed's model (lvsmail.console.availability) with the stack's observed failover times:
the director layer's MTFO is the median over director takeovers (SIGKILL and
links down; a split brain is no node failure), the real-server layer's the
median over real-server faults; layers not observed keep the seed's input.
The ratio is lvsmail's median ÷ the anchor's median: below 1 lvsmail recovered
sooner. It is n/a when either side is n/a, not run, or 0 s (a ratio to or of
"no client noticed" says nothing the two medians do not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from lvsmail.console import availability as av
from lvsmail.lab.chaos.schedule import DIRECTOR_KINDS, KINDS, REALSERVER_KINDS

#: The stacks in the order the table shows them; others follow alphabetically.
STACK_ORDER = ("lvsmail", "seed", "keepalived")
#: The stack the ratios are taken of (``lvsmail ÷ anchor``).
REFERENCE = "lvsmail"
#: Director faults whose recovery is a takeover: the seed's director MTFO measured the same thing.
TAKEOVER_KINDS = ("director_kill", "director_link")
#: The two measures of a fault's recovery; the first is the issue's (the client's view).
CLIENT, AFTER_HEAL = "client", "after_heal"
MEASURE_TITLES = {
    CLIENT: "Time until new sessions succeed again",
    AFTER_HEAL: "Time until the cluster was whole again after healing (the reports have no client-side measure)",
}
MEASURED, NOT_APPLICABLE, NOT_RUN = "measured", "n/a", "not run"


class CompareError(ValueError):
    """A report cannot be compared: not a chaos report, or two reports of one stack."""


def stack_of(report: dict) -> str:
    """The report's stack; reports from before ``--stack`` existed are lvsmail's."""
    return str(report.get("stack") or REFERENCE)


def not_applicable_of(report: dict) -> dict[str, str]:
    """Fault kinds that have no meaning for the report's stack, with the reason (none for old reports)."""
    na = {str(k): str(v) for k, v in (report.get("not_applicable") or {}).items()}
    # A fault row may carry the mark itself too.
    for row in report.get("faults", ()):
        if row.get("not_applicable"):
            na.setdefault(row["kind"], str(row["not_applicable"]))
    return na


def check_report(report: object, label: str) -> dict:
    """``report`` if it has what the comparison reads; else CompareError naming ``label`` and the gap."""
    if not isinstance(report, dict):
        raise CompareError(f"{label}: not a chaos report (a JSON object expected, got {type(report).__name__})")
    missing = [k for k in ("faults", "messages") if k not in report]
    if missing:
        raise CompareError(f"{label}: not a chaos report (no {', '.join(missing)})")
    if not isinstance(report["faults"], list) or any(not isinstance(f, dict) or "kind" not in f
                                                     for f in report["faults"]):
        raise CompareError(f"{label}: 'faults' must be a list of fault rows, each with a 'kind'")
    m = report["messages"]
    if not isinstance(m, dict) or any(k not in m for k in ("accepted", "lost", "duplicates")):
        raise CompareError(f"{label}: 'messages' needs accepted, lost and duplicates")
    na = report.get("not_applicable")
    if na is not None and not isinstance(na, dict):
        raise CompareError(f"{label}: 'not_applicable' must map fault kinds to reasons")
    return report


def load_reports(paths: list[Path]) -> list[dict]:
    """The reports at ``paths``, each checked; CompareError names the file that is not one."""
    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CompareError(f"{path}: cannot read a chaos report: {exc}") from exc
        reports.append(check_report(data, str(path)))
    return reports


def measure_of(reports: list[dict]) -> str:
    """The client-side measure when every fault row of every report has it, else the after-heal one."""
    rows = [f for r in reports for f in r["faults"]]
    return CLIENT if all("recovery_s" in f for f in rows) else AFTER_HEAL


def fault_seconds(row: dict, measure: str) -> float | None:
    """One fault's recovery time in the chosen measure (None: after-heal of a fault that never recovered)."""
    if measure == CLIENT:
        return float(row["recovery_s"])
    if not row.get("recovered") or row.get("recovered_at") is None:
        return None
    return max(0.0, float(row["recovered_at"]) - float(row["healed_at"]))


def spread(values: list[float]) -> dict | None:
    """min / median / max and the count, or None without values."""
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def kind_cell(report: dict, kind: str, measure: str) -> dict:
    """One stack's figures for one fault kind."""
    na = not_applicable_of(report)
    if kind in na:
        return {"status": NOT_APPLICABLE, "reason": na[kind]}
    rows = [f for f in report["faults"] if f["kind"] == kind]
    if not rows:
        return {"status": NOT_RUN, "reason": "not in this run's schedule"}
    seconds = [fault_seconds(f, measure) for f in rows]
    held = kind in DIRECTOR_KINDS
    return {
        "status": MEASURED,
        "occurrences": len(rows),
        "recovery_s": spread([s for s in seconds if s is not None]),
        "not_recovered": sum(1 for f in rows if not f.get("recovered", True)),
        # The other measure, for reference: healing to a whole cluster (failback included).
        "after_heal_s": spread([s for s in (fault_seconds(f, AFTER_HEAL) for f in rows) if s is not None]),
        "held_sessions_open": sum(f.get("held_sessions_open", 0) for f in rows) if held else None,
        "held_sessions_survived": sum(f.get("held_sessions_survived", 0) for f in rows) if held else None,
        "failed_sessions": sum(sum((f.get("failed_sessions") or {}).values()) for f in rows),
    }


def ratio(ours: dict, theirs: dict, ours_name: str = REFERENCE, theirs_name: str = "anchor") -> dict:
    """``ours`` median ÷ ``theirs`` median, or None with the reason it has no meaning."""
    for name, cell in ((ours_name, ours), (theirs_name, theirs)):
        if cell["status"] == NOT_APPLICABLE:
            return {"ratio": None, "why": f"n/a for {name}"}
        if cell["status"] == NOT_RUN:
            return {"ratio": None, "why": f"not run on {name}"}
        if cell["recovery_s"] is None:
            return {"ratio": None, "why": f"{name} never recovered"}
    a, b = ours["recovery_s"]["median"], theirs["recovery_s"]["median"]
    if a == 0 and b == 0:
        return {"ratio": None, "why": "both 0 s"}
    if a == 0 or b == 0:
        return {"ratio": None, "why": f"{ours_name if a == 0 else theirs_name} 0 s"}
    return {"ratio": a / b, "why": ""}


def stack_availability(report: dict, measure: str) -> dict:
    """The seed's availability model with this stack's observed median failover times."""
    na = not_applicable_of(report)
    observed: dict[str, list[float]] = {"directors": [], "realservers": []}
    for row in report["faults"]:
        if row["kind"] in na:
            continue
        layer = ("directors" if row["kind"] in TAKEOVER_KINDS
                 else "realservers" if row["kind"] in REALSERVER_KINDS else None)
        seconds = fault_seconds(row, measure) if layer else None
        if seconds is not None:
            observed[layer].append(seconds)
    layers = []
    for base in av.SEED_LAYERS:
        values = observed.get(base.name)
        if values:
            layers.append(dataclasses.replace(base, mtfo_seconds=statistics.median(values),
                                              mtfo_source=f"median of {len(values)} observed"))
        else:
            why = "not observed in this run" if base.name in observed else "not measured in the lab"
            layers.append(dataclasses.replace(base, mtfo_source=f"seed's ({why})"))
    result = av.evaluate(layers)
    return {
        "percent": round(result.availability * 100, 5),
        "downtime_minutes_per_year": round(result.downtime_minutes_per_year, 3),
        # Per layer to 10 decimals as the seed printed them: a second of MTFO hides in the 5-decimal total.
        "layer_availability": {r.input.name: round(r.availability, 10) for r in result.layers},
        "mtfo_s": {r.input.name: r.input.mtfo_seconds for r in result.layers},
        "mtfo_source": {r.input.name: r.input.mtfo_source for r in result.layers},
        "model": av.as_json(result),
    }


def by_fault(rows) -> dict[str, int]:
    """How many lost or duplicated messages fall in each fault's window ("fault 6 director_kill": 2), for reports
    that pin them on a fault (older ones do not: empty)."""
    counts: dict[str, int] = {}
    for row in rows:
        if "kind" not in row:
            continue
        label = f"fault {row['fault']} {row['kind']}" if row.get("fault") is not None else row["kind"]
        counts[label] = counts.get(label, 0) + 1
    return counts


def _ordered_stacks(names) -> list[str]:
    known = [s for s in STACK_ORDER if s in names]
    return known + sorted(n for n in names if n not in STACK_ORDER)


def _ordered_kinds(names) -> list[str]:
    known = [k for k in KINDS if k in names]
    return known + sorted(n for n in names if n not in KINDS)


def compare(reports: list[dict]) -> dict:
    """The whole comparison, JSON-ready: per kind and stack, per stack, and lvsmail ÷ each anchor."""
    if not reports:
        raise CompareError("no reports to compare")
    by_stack: dict[str, dict] = {}
    for i, report in enumerate(reports):
        check_report(report, f"report {i + 1}")
        name = stack_of(report)
        if name in by_stack:
            raise CompareError(f"two reports of stack {name!r}: compare one run per stack")
        by_stack[name] = report
    stacks = _ordered_stacks(by_stack)
    measure = measure_of(reports)
    kinds = _ordered_kinds({f["kind"] for r in reports for f in r["faults"]}
                           | {k for r in reports for k in not_applicable_of(r)})
    anchors = [s for s in stacks if s != REFERENCE] if REFERENCE in by_stack else []
    per_kind = []
    for kind in kinds:
        cells = {s: kind_cell(by_stack[s], kind, measure) for s in stacks}
        per_kind.append({"kind": kind, "stacks": cells,
                         "ratios": {a: ratio(cells[REFERENCE], cells[a], REFERENCE, a) for a in anchors}})
    per_stack = {}
    for s in stacks:
        r = by_stack[s]
        m = r["messages"]
        held = r.get("held_sessions_across_takeovers") or {}
        per_stack[s] = {
            "seed": r.get("seed"), "duration": r.get("duration"), "mode": r.get("mode"), "started": r.get("started"),
            "faults": len(r["faults"]), "ok": r.get("ok"),
            "setup_seconds": r.get("setup_seconds"), "run_seconds": r.get("run_seconds"),
            "messages": {"accepted": m["accepted"], "lost": len(m["lost"]), "duplicated": len(m["duplicates"]),
                         "unexplained_duplicates": len(m.get("unexplained_duplicates", ())),
                         "never_accepted": m.get("never_accepted"),
                         "lost_by_fault": by_fault(m.get("lost_detail", ())),
                         "duplicated_by_fault": by_fault(m["duplicates"])},
            "held_sessions_across_director_faults": {"open": held.get("open"), "survived": held.get("survived")},
            "not_applicable": not_applicable_of(r),
            "availability": stack_availability(r, measure),
        }
    seeds = sorted({str(r.get("seed")) for r in reports})
    notes = [f"the reports ran different seeds ({', '.join(seeds)}): not the same schedule"] if len(seeds) > 1 else []
    return {"notes": notes, "measure": measure, "title": MEASURE_TITLES[measure], "stacks": stacks,
            "reference": REFERENCE, "anchors": anchors, "seeds": seeds, "kinds": per_kind, "per_stack": per_stack,
            "seed_printed": {"percent": av.SEED_TOTAL_PERCENT, "layers": dict(av.SEED_FIGURES),
                             "mtfo_s": {x.name: x.mtfo_seconds for x in av.SEED_LAYERS}}}


# -- rendering ----------------------------------------------------------------------------------


def _md(text: str) -> str:
    """A table cell: pipes escaped, line breaks flattened (a reason may contain either)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _secs(x: float) -> str:
    return f"{x:.2f}"


def recovery_text(cell: dict) -> str:
    """``min / median / max (×n)`` or ``n/a (reason)``."""
    if cell["status"] == NOT_APPLICABLE:
        return f"n/a ({cell['reason']})"
    if cell["status"] == NOT_RUN:
        return "not run"
    s = cell["recovery_s"]
    text = "never recovered" if s is None else f"{_secs(s['min'])} / {_secs(s['median'])} / {_secs(s['max'])}"
    text += f" (×{cell['occurrences']})"
    if cell["not_recovered"]:
        text += f", {cell['not_recovered']} not recovered"
    return text


def ratio_text(r: dict) -> str:
    """``0.42`` or ``n/a (why)``."""
    return f"{r['ratio']:.2f}" if r["ratio"] is not None else f"n/a ({r['why']})"


def _held_text(cell: dict) -> str:
    if cell["status"] != MEASURED:
        return cell["status"]
    if cell["held_sessions_open"] is None:
        return "–"
    return f"{cell['held_sessions_survived']}/{cell['held_sessions_open']}"


def _failed_text(cell: dict) -> str:
    return str(cell["failed_sessions"]) if cell["status"] == MEASURED else cell["status"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def markdown(comparison: dict) -> str:
    """The comparison as Markdown tables (for bench/RESULTS.md and the README)."""
    c = comparison
    stacks, anchors, ref = c["stacks"], c["anchors"], c["reference"]
    out = [f"Chaos runs compared: {', '.join(stacks)}; seed {', '.join(c['seeds'])}.", ""]
    out += [f"Note: {n}." for n in c.get("notes", ())] + ([""] if c.get("notes") else [])
    out += [f"### {c['title']}, per fault kind (s)", ""]
    if c["measure"] == CLIENT:
        out.append("min / median / max over the kind's occurrences (×n), from the injection to the start of the "
                   "last failed SMTP or IMAP session before the next fault; 0 when no client noticed.")
    else:
        out.append("min / median / max over the kind's occurrences (×n), from healing to the cluster being whole.")
    if anchors:
        out.append(f"Ratio: {ref}'s median ÷ the anchor's (below 1: {ref} recovered sooner).")
    out.append("")
    header = ["fault", *stacks, *(f"{ref} ÷ {a}" for a in anchors)]
    rows = [[k["kind"], *(recovery_text(k["stacks"][s]) for s in stacks),
             *(ratio_text(k["ratios"][a]) for a in anchors)] for k in c["kinds"]]
    out += _table(header, rows)
    out += ["", "### Sessions per fault kind", "",
            "held: held SMTP sessions open through the VIP when a director fault began that were still usable "
            "after recovery (summed over occurrences); failed: SMTP + IMAP sessions that failed between the "
            "fault's injection and the next fault.", ""]
    header = ["fault", *(f"{s} held" for s in stacks), *(f"{s} failed" for s in stacks)]
    rows = [[k["kind"], *(_held_text(k["stacks"][s]) for s in stacks),
             *(_failed_text(k["stacks"][s]) for s in stacks)] for k in c["kinds"]]
    out += _table(header, rows)
    out += ["", "### Messages", ""]
    out.append("The run's length (setup included) sets how many messages there were: a loaded machine "
               "stretches every wait.")
    out.append("")
    header = ["stack", "accepted", "lost", "duplicated (unexplained)", "never accepted",
              "held sessions survived, director faults", "run ok", "run s (setup s)"]
    rows = []
    for s in stacks:
        p = c["per_stack"][s]
        m, h = p["messages"], p["held_sessions_across_director_faults"]
        rows.append([s, str(m["accepted"]), f"{m['lost']}{_where(m['lost_by_fault'])}",
                     f"{m['duplicated']} ({m['unexplained_duplicates']}){_where(m['duplicated_by_fault'])}",
                     str(m["never_accepted"]),
                     f"{h['survived']}/{h['open']}" if h["open"] is not None else "–",
                     {True: "yes", False: "no", None: "–"}[p["ok"]],
                     _run_text(p)])
    out += _table(header, rows)
    out += ["", "### Availability, the seed's model with each stack's observed failover times", "",
            "Director layer: median over director takeovers (SIGKILL, links down); real-server layer: median over "
            "real-server faults; storage: the seed's. The seed's printed figure is from its own hardware.", ""]
    header = ["stack", "director MTFO s", "director layer", "real-server MTFO s", "real-server layer",
              "cluster", "downtime per year"]
    rows = []
    for s in stacks:
        a = c["per_stack"][s]["availability"]
        rows.append([s, _mtfo_text(a, "directors"), f"{a['layer_availability']['directors']:.10f}",
                     _mtfo_text(a, "realservers"), f"{a['layer_availability']['realservers']:.10f}",
                     f"{a['percent']:.5f} %", f"{a['downtime_minutes_per_year']:.2f} min"])
    sp = c["seed_printed"]
    rows.append(["seed as printed (its hardware)", f"{sp['mtfo_s']['directors']:.3f}",
                 f"{sp['layers']['directors']:.10f}", f"{sp['mtfo_s']['realservers']:.3f}",
                 f"{sp['layers']['realservers']:.10f}", f"{sp['percent']:.5f} %", "–"])
    out += _table(header, rows)
    return "\n".join(out) + "\n"


def _run_text(p: dict) -> str:
    """``413 (33)``: the whole run and its setup, in seconds, as far as the report says."""
    run, setup = p.get("run_seconds"), p.get("setup_seconds")
    return (f"{run:.0f}" if run is not None else "–") + (f" ({setup:.0f})" if setup is not None else "")


def _where(counts: dict[str, int]) -> str:
    """`` (fault 6 director_kill: 2; after the faults: 1)`` or nothing."""
    return f" ({'; '.join(f'{k}: {n}' for k, n in counts.items())})" if counts else ""


def _mtfo_text(a: dict, layer: str) -> str:
    source = a["mtfo_source"][layer]
    text = f"{a['mtfo_s'][layer]:.3f}"
    return text if source.startswith("median") else f"{text} ({source})"


def plot(comparison: dict, path) -> str | None:
    """Bars per fault kind, one per stack: the median with min–max whiskers; the path, or None without
    matplotlib (a note is added to the comparison then, as the chaos report does)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        comparison.setdefault("notes", []).append(
            "no plot: matplotlib is not installed (pip install 'lvsmail[lab]')")
        return None
    stacks, kinds = comparison["stacks"], comparison["kinds"]
    width = 0.8 / max(1, len(stacks))
    fig, ax = plt.subplots(figsize=(12, 4.8))
    top = max([1.0] + [k["stacks"][s]["recovery_s"]["max"] for k in kinds for s in stacks
                       if k["stacks"][s]["status"] == MEASURED and k["stacks"][s]["recovery_s"]])
    for j, s in enumerate(stacks):
        xs, med, low, high = [], [], [], []
        for i, k in enumerate(kinds):
            cell, x = k["stacks"][s], i + (j - (len(stacks) - 1) / 2) * width
            if cell["status"] == MEASURED and cell["recovery_s"]:
                r = cell["recovery_s"]
                xs.append(x)
                med.append(r["median"])
                low.append(r["median"] - r["min"])
                high.append(r["max"] - r["median"])
            else:
                ax.text(x, top * 0.02, "n/a" if cell["status"] == NOT_APPLICABLE else "–", ha="center",
                        va="bottom", fontsize=7, rotation=90)
        ax.bar(xs, med, width, yerr=[low, high], capsize=3, label=s)
        for x, m in zip(xs, med):  # a 0 s bar is invisible: its figure says it was measured
            ax.text(x, m + top * 0.01, f"{m:.1f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels([k["kind"] for k in kinds], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("seconds (median, min–max)")
    ax.set_title(f"{comparison['title']}; seed {', '.join(comparison['seeds'])}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """``python3 -m lvsmail.lab.chaos.compare REPORT.json ...``: the Markdown on stdout, JSON and plot on request."""
    parser = argparse.ArgumentParser(prog="python3 -m lvsmail.lab.chaos.compare", description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="chaos report JSON files, one per stack")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here too")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the bar plot (PNG) here")
    args = parser.parse_args(argv)
    try:
        comparison = compare(load_reports(args.reports))
    except CompareError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        comparison["plot"] = plot(comparison, args.plot)
    text = markdown(comparison)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(comparison, indent=2) + "\n")
    sys.stdout.write(text)
    for note in comparison.get("notes", ()):
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
