"""A short ``lvsmail lab chaos`` run in the lab: faults while MTA-like clients send mail; nothing accepted is lost.

The full run is ``lvsmail lab chaos --duration 300 --seed 1``; CI runs a short
one with the same code. Seed 1's first minute exercises real-server faults; a
second pass of fault kinds is forced here so that CI also sees a director
takeover (the master director SIGKILLed and restarted, with failback) and a
reload with a changed file, the two riskiest moments for accepted mail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

KINDS = ("director_kill", "rs_hang", "reload", "smtp_stop")


def test_chaos_loses_no_accepted_message(lab_ok, lab_out, capsys):
    from lvsmail.lab.chaos.run import run_chaos

    report = run_chaos(duration=75, seed=1, out_dir=lab_out, kinds=KINDS, say=print)
    with capsys.disabled():
        from lvsmail.lab.chaos.report import text_summary

        print(text_summary(report))
    m = report["messages"]
    assert m["accepted"] > 0
    assert m["lost"] == [], f"accepted messages missing from the Maildirs: {m['lost']}"
    assert m["unexplained_duplicates"] == [], m["duplicates"]
    assert m["queues_left"] == {}, m["queues_left"]
    assert report["faults"], "no fault was injected"
    assert all(f["recovered"] for f in report["faults"]), report["faults"]
    kinds = {f["kind"] for f in report["faults"]}
    assert "director_kill" in kinds, kinds
    assert json.loads(Path(report["files"]["json"]).read_text())["ok"] is True
