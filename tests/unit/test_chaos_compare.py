"""The stacks' chaos comparison: per kind min/median/max, n/a with reasons, ratios, messages, availability."""

from __future__ import annotations

import json

import pytest

from lvsmail.console import availability as av
from lvsmail.lab.chaos import compare as cmp

NO_REGISTRATION = "no registration API: real servers are listed statically"


def fault(kind, recovery, *, index=1, failed=(0, 0), held=(0, 0), recovered=True, healed=10.0, whole=12.0):
    """One fault row as the chaos report writes it."""
    return {"index": index, "kind": kind, "target": "rs1", "injected_at": healed - 5, "healed_at": healed,
            "recovered_at": whole if recovered else None, "recovered": recovered, "recovery_s": recovery,
            "failed_sessions": {"smtp": failed[0], "imap": failed[1]},
            "held_sessions_open": held[0], "held_sessions_survived": held[1]}


def report(faults, *, stack=None, na=None, accepted=100, lost=(), dups=(), unexplained=(), ok=True):
    """A chaos report with only what the comparison reads (plus the stack fields when given)."""
    r = {"seed": 1, "duration": 170, "mode": "tun", "faults": faults, "ok": ok, "setup_seconds": 33.2,
         "run_seconds": 412.6,
         "messages": {"accepted": accepted, "lost": list(lost), "never_accepted": 0,
                      "duplicates": [{"message_id": d, "copies": 2} for d in dups],
                      "unexplained_duplicates": list(unexplained)},
         "held_sessions_across_takeovers": {"open": 4, "survived": 4}}
    if stack is not None:
        r["stack"] = stack
    if na is not None:
        r["not_applicable"] = na
    return r


def row(comparison, kind):
    return next(k for k in comparison["kinds"] if k["kind"] == kind)


def test_min_median_max_over_the_kinds_occurrences():
    c = cmp.compare([report([fault("rs_hang", 4.0), fault("rs_hang", 1.0, index=2), fault("rs_hang", 2.0, index=3)])])
    cell = row(c, "rs_hang")["stacks"]["lvsmail"]
    assert cell["recovery_s"] == {"min": 1.0, "median": 2.0, "max": 4.0, "n": 3}
    assert cmp.recovery_text(cell) == "1.00 / 2.00 / 4.00 (×3)"
    assert c["measure"] == cmp.CLIENT


def test_a_report_without_stack_fields_is_lvsmails_with_nothing_not_applicable():
    c = cmp.compare([report([fault("join_leave", 0.0)])])
    assert c["stacks"] == ["lvsmail"] and c["anchors"] == []
    assert row(c, "join_leave")["stacks"]["lvsmail"]["status"] == cmp.MEASURED
    assert c["per_stack"]["lvsmail"]["not_applicable"] == {}


def test_not_applicable_kind_is_shown_with_its_reason_and_has_no_ratio():
    ours = report([fault("join_leave", 0.5), fault("rs_kill", 1.0, index=2)])
    seed = report([fault("rs_kill", 2.0)], stack="seed", na={"join_leave": NO_REGISTRATION})
    c = cmp.compare([seed, ours])
    assert c["stacks"] == ["lvsmail", "seed"]  # lvsmail first whatever the input order
    jl = row(c, "join_leave")
    assert jl["stacks"]["seed"] == {"status": "n/a", "reason": NO_REGISTRATION}
    assert jl["ratios"]["seed"] == {"ratio": None, "why": "n/a for seed"}
    md = cmp.markdown(c)
    line = next(x for x in md.splitlines() if x.startswith("| join_leave | 0.50"))
    assert f"| n/a ({NO_REGISTRATION}) |" in line and line.endswith("| n/a (n/a for seed) |")


def test_a_kind_missing_from_one_schedule_is_not_run_not_silently_dropped():
    c = cmp.compare([report([fault("reload", 1.0), fault("rs_kill", 1.0, index=2)]),
                     report([fault("rs_kill", 2.0)], stack="keepalived")])
    assert row(c, "reload")["stacks"]["keepalived"]["status"] == cmp.NOT_RUN
    assert row(c, "reload")["ratios"]["keepalived"]["why"] == "not run on keepalived"


@pytest.mark.parametrize("ours, theirs, expected", [
    (1.0, 4.0, (0.25, "")),
    (6.0, 3.0, (2.0, "")),
    (0.0, 3.0, (None, "lvsmail 0 s")),
    (3.0, 0.0, (None, "seed 0 s")),
    (0.0, 0.0, (None, "both 0 s")),
], ids=["faster", "slower", "ours-zero", "anchor-zero", "both-zero"])
def test_ratio_is_median_over_median_and_none_with_a_reason_at_zero(ours, theirs, expected):
    c = cmp.compare([report([fault("director_kill", ours)]),
                     report([fault("director_kill", theirs)], stack="seed")])
    r = row(c, "director_kill")["ratios"]["seed"]
    assert (r["ratio"], r["why"]) == expected


def test_ratio_uses_the_medians_not_the_means():
    ours = [fault("smtp_stop", s, index=i) for i, s in enumerate((1.0, 2.0, 30.0))]  # median 2, mean 11
    theirs = [fault("smtp_stop", s, index=i) for i, s in enumerate((4.0, 4.0, 4.0))]
    c = cmp.compare([report(ours), report(theirs, stack="keepalived")])
    assert row(c, "smtp_stop")["ratios"]["keepalived"]["ratio"] == pytest.approx(0.5)
    assert cmp.ratio_text(row(c, "smtp_stop")["ratios"]["keepalived"]) == "0.50"


def test_held_sessions_summed_for_director_faults_only_and_failed_sessions_per_kind():
    faults = [fault("director_kill", 0.0, held=(4, 4), failed=(1, 2)),
              fault("director_kill", 3.0, index=2, held=(3, 1)),
              fault("smtp_stop", 0.5, index=3, failed=(2, 0), held=(9, 9))]
    c = cmp.compare([report(faults)])
    dk, ss = row(c, "director_kill")["stacks"]["lvsmail"], row(c, "smtp_stop")["stacks"]["lvsmail"]
    assert (dk["held_sessions_survived"], dk["held_sessions_open"], dk["failed_sessions"]) == (5, 7, 3)
    assert ss["held_sessions_open"] is None and ss["failed_sessions"] == 2
    md = cmp.markdown(c)
    assert "| director_kill | 5/7 | 3 |" in md
    assert "| smtp_stop | – | 2 |" in md


def test_messages_lost_and_duplicated_per_stack():
    ours = report([fault("rs_kill", 1.0)], accepted=200)
    seed = report([fault("rs_kill", 1.0)], stack="seed", accepted=190, lost=["<a@x>", "<b@x>"],
                  dups=["<c@x>", "<d@x>", "<e@x>"], unexplained=["<e@x>"], ok=False)
    c = cmp.compare([ours, seed])
    assert c["per_stack"]["seed"]["messages"] == {"accepted": 190, "lost": 2, "duplicated": 3,
                                                  "unexplained_duplicates": 1, "never_accepted": 0,
                                                  "lost_by_fault": {}, "duplicated_by_fault": {}}
    assert c["per_stack"]["lvsmail"]["messages"]["lost"] == 0
    md = cmp.markdown(c)
    assert "| seed | 190 | 2 | 3 (1) | 0 | 4/4 | no | 413 (33) |" in md
    assert "| lvsmail | 200 | 0 | 0 (0) | 0 | 4/4 | yes | 413 (33) |" in md


def test_availability_uses_each_stacks_median_takeover_and_real_server_times():
    faults = [fault("director_kill", 2.0), fault("director_link", 4.0, index=2), fault("director_link", 9.0, index=3),
              fault("director_split", 50.0, index=4),  # no takeover: not in the director layer
              fault("rs_kill", 1.0, index=5), fault("smtp_stop", 3.0, index=6), fault("reload", 70.0, index=7)]
    c = cmp.compare([report(faults), report([fault("rs_kill", 0.5)], stack="seed")])
    ours, seed = c["per_stack"]["lvsmail"]["availability"], c["per_stack"]["seed"]["availability"]
    assert ours["mtfo_s"] == {"directors": 4.0, "realservers": 2.0, "storage": 137.162}
    expected = av.evaluate([
        av.LayerInput("directors", 2, "active-passive", av.SEED_NODE_AVAILABILITY, av.SEED_MTBF_HOURS, 4.0),
        av.LayerInput("realservers", 4, "all-active", av.SEED_NODE_AVAILABILITY, av.SEED_MTBF_HOURS, 2.0),
        av.SEED_LAYERS[2]])
    assert ours["percent"] == round(expected.availability * 100, 5)
    # The seed stack saw no director takeover: its director layer keeps the seed's input, and says so.
    assert seed["mtfo_s"]["directors"] == 4.351 and seed["mtfo_s"]["realservers"] == 0.5
    assert seed["mtfo_source"]["directors"] == "seed's (not observed in this run)"
    assert "| seed | 4.351 (seed's (not observed in this run)) | 0.9999989434 | 0.500 |" in cmp.markdown(c)
    # 0.35 s less per takeover shows in the director layer's ten decimals and the downtime, not the total's five.
    assert ours["layer_availability"]["directors"] == round(expected.layers[0].availability, 10) \
        > seed["layer_availability"]["directors"]
    assert ours["downtime_minutes_per_year"] == round(expected.downtime_minutes_per_year, 3)


def test_not_applicable_rows_do_not_feed_the_availability():
    seed = report([fault("director_kill", 1.0),
                   dict(fault("director_link", 99.0, index=2), not_applicable="no links to take down")],
                  stack="seed")
    c = cmp.compare([seed])
    assert c["per_stack"]["seed"]["availability"]["mtfo_s"]["directors"] == 1.0
    assert row(c, "director_link")["stacks"]["seed"] == {"status": "n/a", "reason": "no links to take down"}


def test_reports_without_client_measure_fall_back_to_after_heal_and_say_so():
    old = report([fault("rs_kill", 0.0, healed=10.0, whole=13.5), fault("rs_kill", 0.0, index=2, recovered=False)])
    for f in old["faults"]:
        del f["recovery_s"]
    c = cmp.compare([old])
    assert c["measure"] == cmp.AFTER_HEAL
    cell = row(c, "rs_kill")["stacks"]["lvsmail"]
    assert cell["recovery_s"]["median"] == 3.5 and cell["not_recovered"] == 1
    md = cmp.markdown(c)
    assert "### Time until the cluster was whole again after healing" in md
    assert "| rs_kill | 3.50 / 3.50 / 3.50 (×2), 1 not recovered |" in md


GOLDEN = """\
Chaos runs compared: lvsmail, keepalived; seed 1.

### Time until new sessions succeed again, per fault kind (s)

min / median / max over the kind's occurrences (×n), from the injection to the start of the last failed SMTP or \
IMAP session before the next fault; 0 when no client noticed.
Ratio: lvsmail's median ÷ the anchor's (below 1: lvsmail recovered sooner).

| fault | lvsmail | keepalived | lvsmail ÷ keepalived |
|---|---|---|---|
| director_kill | 1.00 / 1.00 / 1.00 (×1) | 3.00 / 3.00 / 3.00 (×1) | 0.33 |
| join_leave | 0.00 / 0.00 / 0.00 (×1) | n/a (no API \\| none) | n/a (n/a for keepalived) |

### Sessions per fault kind

held: held SMTP sessions open through the VIP when a director fault began that were still usable after recovery \
(summed over occurrences); failed: SMTP + IMAP sessions that failed between the fault's injection and the next fault.

| fault | lvsmail held | keepalived held | lvsmail failed | keepalived failed |
|---|---|---|---|---|
| director_kill | 2/2 | 0/2 | 1 | 4 |
| join_leave | – | n/a | 0 | n/a |

### Messages

The run's length (setup included) sets how many messages there were: a loaded machine stretches every wait.

| stack | accepted | lost | duplicated (unexplained) | never accepted | held sessions survived, director faults | \
run ok | run s (setup s) |
|---|---|---|---|---|---|---|---|
| lvsmail | 100 | 0 | 0 (0) | 0 | 4/4 | yes | 413 (33) |
| keepalived | 100 | 0 | 0 (0) | 0 | 4/4 | yes | 413 (33) |

### Availability, the seed's model with each stack's observed failover times

Director layer: median over director takeovers (SIGKILL, links down); real-server layer: median over real-server \
faults; storage: the seed's. The seed's printed figure is from its own hardware.

| stack | director MTFO s | director layer | real-server MTFO s | real-server layer | cluster | downtime per year |
|---|---|---|---|---|---|---|
| lvsmail | 1.000 | {ours_dir} | 0.762 (seed's (not observed in this run)) | 0.9999999755 | {ours} % | {ours_down} min |
| keepalived | 3.000 | {theirs_dir} | 0.762 (seed's (not observed in this run)) | 0.9999999755 | {theirs} % | \
{theirs_down} min |
| seed as printed (its hardware) | 4.351 | 0.9999989434 | 0.762 | 0.9999999755 | 99.99608 % | – |
"""


def test_markdown_rendering_is_stable_and_escapes_pipes():
    ours = report([fault("director_kill", 1.0, held=(2, 2), failed=(1, 0)), fault("join_leave", 0.0, index=2)])
    theirs = report([fault("director_kill", 3.0, held=(2, 0), failed=(3, 1))], stack="keepalived",
                    na={"join_leave": "no API | none"})
    c = cmp.compare([ours, theirs])
    a = {s: c["per_stack"][s]["availability"] for s in ("lvsmail", "keepalived")}
    figures = {}
    for who, s in (("ours", "lvsmail"), ("theirs", "keepalived")):
        figures[who] = f"{a[s]['percent']:.5f}"
        figures[f"{who}_down"] = f"{a[s]['downtime_minutes_per_year']:.2f}"
        figures[f"{who}_dir"] = f"{a[s]['layer_availability']['directors']:.10f}"
    expected = GOLDEN.format(**figures)
    assert cmp.markdown(c) == expected
    assert cmp.markdown(cmp.compare([theirs, ours])) == expected  # input order does not matter
    # A longer director takeover costs availability.
    assert a["lvsmail"]["layer_availability"]["directors"] > a["keepalived"]["layer_availability"]["directors"]
    assert a["lvsmail"]["downtime_minutes_per_year"] < a["keepalived"]["downtime_minutes_per_year"]


def test_two_reports_of_one_stack_or_a_non_report_are_refused():
    with pytest.raises(cmp.CompareError, match="two reports of stack 'seed'"):
        cmp.compare([report([], stack="seed"), report([], stack="seed")])
    with pytest.raises(cmp.CompareError, match="no faults"):
        cmp.compare([{"messages": {}}])
    with pytest.raises(cmp.CompareError, match="each with a 'kind'"):
        cmp.compare([dict(report([]), faults=[{"index": 1}])])
    with pytest.raises(cmp.CompareError, match="no reports"):
        cmp.compare([])


def test_main_writes_markdown_and_json_and_refuses_a_bad_file(tmp_path, capsys):
    a, b, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json"
    a.write_text(json.dumps(report([fault("rs_kill", 1.0)])))
    b.write_text(json.dumps(report([fault("rs_kill", 2.0)], stack="seed", na={"join_leave": NO_REGISTRATION})))
    bad.write_text("{not json")
    md, js = tmp_path / "s.md", tmp_path / "s.json"
    assert cmp.main([str(a), str(b), "--markdown", str(md), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert out == md.read_text() and "| rs_kill | 1.00 / 1.00 / 1.00 (×1) | 2.00 / 2.00 / 2.00 (×1) | 0.50 |" in out
    saved = json.loads(js.read_text())
    assert saved["per_stack"]["seed"]["not_applicable"] == {"join_leave": NO_REGISTRATION}
    assert cmp.main([str(a), str(bad), "--json", str(tmp_path / "never.json")]) == 2
    assert "bad.json: cannot read a chaos report" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()


def test_plot_draws_one_bar_group_per_kind(tmp_path):
    pytest.importorskip("matplotlib")
    c = cmp.compare([report([fault("rs_kill", 1.0), fault("rs_kill", 3.0, index=2)]),
                     report([fault("rs_kill", 2.0)], stack="seed", na={"join_leave": NO_REGISTRATION})])
    path = cmp.plot(c, tmp_path / "stacks.png")
    assert path == str(tmp_path / "stacks.png")
    assert (tmp_path / "stacks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- bench/stacks.py: the options and the comparison of saved reports (the runs need the lab) ---------


def test_stacks_short_variant_and_the_chaos_command_per_stack(tmp_path):
    from bench import stacks

    args = stacks.parse(["--short", "--seed", "7", "--out-dir", str(tmp_path)])
    assert (args.duration, args.kinds, args.stacks) == (stacks.SHORT_DURATION, ",".join(stacks.SHORT_KINDS),
                                                        ["lvsmail", "seed", "keepalived"])
    argv = stacks.chaos_argv("seed", args)
    assert argv[1:] == ["-m", "lvsmail", "lab", "chaos", "--stack", "seed", "--seed", "7", "--duration", "100",
                        "--out", str(tmp_path / "seed"), "--kinds", ",".join(stacks.SHORT_KINDS)]
    assert stacks.parse(["--short", "--kinds", "rs_kill"]).kinds == "rs_kill"
    assert stacks.parse([]).kinds is None and stacks.parse([]).duration == 300.0


@pytest.mark.parametrize("bad", [["--stacks", "seed,heartbeat"], ["--stacks", "seed,seed"], ["--kinds", "rs_nap"],
                                 ["--duration", "5"]])
def test_stacks_bad_options_exit_2_naming_the_option(bad, capsys):
    from bench import stacks

    with pytest.raises(SystemExit) as exc:
        stacks.parse(bad)
    assert exc.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_stacks_compare_only_writes_the_table_and_checks_each_reports_stack(tmp_path, capsys):
    from bench import stacks

    for stack, seconds in (("lvsmail", 1.0), ("seed", 4.0)):
        (tmp_path / stack).mkdir()
        r = report([fault("director_kill", seconds)], stack=stack,
                   na={"join_leave": NO_REGISTRATION} if stack == "seed" else {})
        (tmp_path / stack / f"chaos-{stack}-seed1-1.json").write_text(json.dumps(r))
    assert stacks.main(["--compare-only", "--out-dir", str(tmp_path), "--stacks", "lvsmail,seed"]) == 0
    md = (tmp_path / "stacks.md").read_text()
    assert "| director_kill | 1.00 / 1.00 / 1.00 (×1) | 4.00 / 4.00 / 4.00 (×1) | 0.25 |" in md
    saved = json.loads((tmp_path / "stacks.json").read_text())
    assert [r["stack"] for r in saved["runs"]] == ["lvsmail", "seed"] and saved["comparison"]["anchors"] == ["seed"]
    # keepalived has no report: still a table of the other two, and exit 1 saying so.
    assert stacks.main(["--compare-only", "--out-dir", str(tmp_path)]) == 1
    assert f"- keepalived: NO REPORT in `{tmp_path / 'keepalived'}`" in (tmp_path / "stacks.md").read_text()
    # A report in the wrong stack's directory (the run ignored --stack) is refused by name.
    (tmp_path / "keepalived").mkdir()
    (tmp_path / "keepalived" / "chaos-seed1-2.json").write_text(json.dumps(report([fault("rs_kill", 1.0)])))
    capsys.readouterr()
    assert stacks.main(["--compare-only", "--out-dir", str(tmp_path)]) == 2
    assert "chaos-seed1-2.json is a report of stack 'lvsmail', not 'keepalived'" in capsys.readouterr().err


def test_reports_of_different_seeds_are_compared_with_a_note():
    other = dict(report([fault("rs_kill", 2.0)], stack="seed"), seed=2)
    c = cmp.compare([report([fault("rs_kill", 1.0)]), other])
    assert c["seeds"] == ["1", "2"]
    assert "Note: the reports ran different seeds (1, 2): not the same schedule." in cmp.markdown(c)


def test_lost_and_duplicated_messages_are_pinned_on_the_fault_whose_window_accepted_them():
    """Through the chaos report itself: build_report says in which fault's window each was accepted."""
    import threading

    from lvsmail.lab.chaos.clients import Message
    from lvsmail.lab.chaos.report import build_report
    from lvsmail.lab.chaos.run import FaultRecord
    from lvsmail.lab.chaos.schedule import FaultSpec

    class Clients:
        events, lock = [], threading.Lock()

    class Held:
        sessions, failures = {}, {}

    def msg(mid, at, ambiguous=0):
        return Message(mid=mid, rcpt="alice@example.org", source="203.0.113.10", created=0.0, attempts=1,
                       ambiguous=ambiguous, accepted_at=at, accepted_by="rs2")

    records = [FaultRecord(FaultSpec(1, "rs_hang", "rs2", 8.0, 6.0), "rs2", injected=108.0, healed=114.0,
                           recovered=115.0),
               FaultRecord(FaultSpec(2, "director_kill", "master", 20.0, 12.0), "director1", injected=120.0,
                           healed=132.0, recovered=140.0)]
    Clients.messages = [msg("early", 103.0), msg("hang", 110.0), msg("kill1", 125.0), msg("kill2", 150.0),
                        msg("late", 170.0), msg("dup", 121.0, ambiguous=1)]
    box = ["alice@example.org"]
    r = build_report(seed=1, duration=60, mode="tun", realservers=4, faults=[], records=records, clients=Clients(),
                     held=Held(), found={"dup": box * 2}, start=100.0, end=160.0, queues_left={}, unaccepted=0,
                     setup_seconds=1.0)
    assert [(d["message_id"], d["fault"], d["kind"], d["accepted_at"]) for d in r["messages"]["lost_detail"]] == [
        ("early", None, "before the first fault", 3.0), ("hang", 1, "rs_hang", 10.0),
        ("kill1", 2, "director_kill", 25.0), ("kill2", 2, "director_kill", 50.0),
        ("late", None, "after the faults", 70.0)]
    r["stack"] = "seed"
    m = cmp.compare([r])["per_stack"]["seed"]["messages"]
    assert m["lost_by_fault"] == {"before the first fault": 1, "fault 1 rs_hang": 1, "fault 2 director_kill": 2,
                                  "after the faults": 1}
    assert m["duplicated_by_fault"] == {"fault 2 director_kill": 1}
    assert ("| seed | 6 | 5 (before the first fault: 1; fault 1 rs_hang: 1; fault 2 director_kill: 2; "
            "after the faults: 1) | 1 (0) (fault 2 director_kill: 1) |") in cmp.markdown(cmp.compare([r]))


def test_stacks_run_output_is_logged_and_a_run_past_its_time_is_interrupted(capsys):
    import io
    import sys

    from bench import stacks

    log = io.StringIO()
    assert stacks._tee(["sh", "-c", "echo one; echo two; exit 3", "--stack", "seed"], log, 30) == 3
    assert log.getvalue() == "one\ntwo\n"
    assert capsys.readouterr().out == "  [seed] one\n  [seed] two\n"
    log = io.StringIO()
    slow = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)", "--stack", "keepalived"]
    assert stacks._tee(slow, log, 1.0) is None  # SIGINT: KeyboardInterrupt ends it within the second
    assert log.getvalue().startswith("up\n") and "timed out after 1 s" in log.getvalue()
