"""A shorter ``lvsmail lab chaos`` run in the lab: every kind of fault once while MTA-like clients
send and read mail; nothing accepted is lost.

The full run is ``lvsmail lab chaos --duration 300 --seed 1`` (18 faults, each
kind at least once, most twice). CI runs the same code for 170 s, the length of
seed 1's first round: each of the ten kinds exactly once, real-server faults,
a reload, a join and leave, and the three director faults (SIGKILL of the
master with restart and failback, its links down, a split brain).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.whole_cluster]


def test_chaos_every_fault_kind_once_loses_no_accepted_message(lab_ok, lab_out, alone_in_the_lab, capsys):
    from lvsmail.lab.chaos.report import text_summary
    from lvsmail.lab.chaos.run import run_chaos
    from lvsmail.lab.chaos.schedule import KINDS

    report = run_chaos(duration=170, seed=1, out_dir=lab_out, say=print)
    with capsys.disabled():
        print(text_summary(report))
    assert {f["kind"] for f in report["faults"]} == set(KINDS)
    m = report["messages"]
    assert m["accepted"] > 50, m["accepted"]
    assert m["lost"] == [], f"accepted messages missing from the Maildirs: {m['lost']}"
    assert m["unexplained_duplicates"] == [], m["duplicates"]
    assert m["queues_left"] == {}, m["queues_left"]
    assert all(f["recovered"] for f in report["faults"]), [f for f in report["faults"] if not f["recovered"]]
    # Connection sync: SMTP sessions open through the VIP when the master was SIGKILLed go on with the
    # backup (their real server is untouched; only the director changed).
    kill = next(f for f in report["faults"] if f["kind"] == "director_kill")
    assert kill["held_sessions_open"] > 0, kill
    assert kill["held_sessions_survived"] == kill["held_sessions_open"], kill
    saved = json.loads(Path(report["files"]["json"]).read_text())
    assert saved["ok"] is True and saved["messages"]["lost"] == []
    assert Path(report["files"]["plot"]).stat().st_size > 10_000
