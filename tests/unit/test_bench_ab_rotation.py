"""bench/ab_rotation.py: every order of the builds runs once per cycle, and the pooling keeps rounds apart."""

from bench.ab_rotation import pooled, report, rounds


def test_every_build_runs_first_and_last_equally_often():
    order = rounds(["base", "base2", "new"], cycles=2)
    assert len(order) == 12 and len(set(order)) == 6
    for position in (0, 2):
        firsts = [o[position] for o in order]
        assert {b: firsts.count(b) for b in ("base", "base2", "new")} == {"base": 4, "base2": 4, "new": 4}


def _run(apply, read):
    return [{"case": "full apply", "tool": "lvsmail reconcile", "samples": apply},
            {"case": "full read", "tool": "lvsmail dump", "samples": read}]


def test_pooled_series_hold_every_rounds_samples_and_ratios_are_per_round():
    results = {"base": [_run([4.0, 4.2], [1.0]), _run([5.0, 5.2], [1.0])],
               "new": [_run([4.4, 4.6], [1.0]), _run([4.9, 5.1], [2.0])]}
    pools = pooled(results)
    assert pools[("full apply", "lvsmail reconcile")]["new"].samples == [4.4, 4.6, 4.9, 5.1]
    lines = report(results, ["base", "new"])
    apply_rounds = lines[lines.index("full apply — lvsmail reconcile") + 2]
    assert apply_rounds == "    per round new ÷ base: 1.098 0.980"  # 4.5 / 4.1 and 5.0 / 5.1
    assert lines[-1] == "    per round new ÷ base: 1.000 2.000"
    assert "ratio  1.033" in lines[1]  # pooled medians: 4.75 / 4.6
