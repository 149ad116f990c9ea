"""The failover recorder: one JSON line per outage, bounded, readable while written."""

import json
import multiprocessing

import pytest

from lvsmail.console.outages import (
    DIRECTOR_TAKEOVER,
    REALSERVER_REMOVAL,
    OutageRecorder,
    outages_path,
    read_outages,
)


def test_path_is_next_to_the_directors_other_state(tmp_path):
    assert outages_path(tmp_path, "/etc/lvsmail/clustermail.yaml") == tmp_path / "clustermail.outages.jsonl"


def test_records_are_appended_as_json_lines_and_read_back(tmp_path):
    path = tmp_path / "c.outages.jsonl"
    rec = OutageRecorder(path)
    rec.record(DIRECTOR_TAKEOVER, 4.351, when=1000.0, detail="peer 198.51.100.2\nsilent")
    rec.record(REALSERVER_REMOVAL, 0.762, when=1001.5, detail="smtp 198.51.100.20:25")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"kind": "director_takeover", "seconds": 4.351, "when": 1000.0,
                                    "detail": "peer 198.51.100.2 silent"}
    log = read_outages(path)
    assert [(o.kind, o.seconds) for o in log.outages] == [(DIRECTOR_TAKEOVER, 4.351), (REALSERVER_REMOVAL, 0.762)]
    assert log.median(DIRECTOR_TAKEOVER) == 4.351 and log.median("realserver_removal") == 0.762


def test_median_of_several(tmp_path):
    rec = OutageRecorder(tmp_path / "o.jsonl")
    for s in (5.0, 1.0, 3.0, 100.0):
        rec.record(DIRECTOR_TAKEOVER, s)
    assert read_outages(tmp_path / "o.jsonl").median(DIRECTOR_TAKEOVER) == 4.0
    assert read_outages(tmp_path / "o.jsonl").median(REALSERVER_REMOVAL) is None


@pytest.mark.parametrize("kind, seconds, message", [
    ("takeover", 1.0, "unknown outage kind"),
    (DIRECTOR_TAKEOVER, -1.0, "finite number of seconds"),
    (DIRECTOR_TAKEOVER, float("nan"), "finite number of seconds"),
    (DIRECTOR_TAKEOVER, True, "finite number of seconds"),
])
def test_bad_records_are_refused_and_nothing_is_written(tmp_path, kind, seconds, message):
    path = tmp_path / "o.jsonl"
    with pytest.raises(ValueError, match=message):
        OutageRecorder(path).record(kind, seconds)
    assert not path.exists()


def test_file_stays_bounded_and_keeps_the_newest(tmp_path):
    path = tmp_path / "o.jsonl"
    rec = OutageRecorder(path, max_bytes=4096)
    for i in range(500):
        rec.record(REALSERVER_REMOVAL, float(i), when=float(i))
    assert path.stat().st_size <= 4096
    seconds = [o.seconds for o in read_outages(path).outages]
    assert seconds[-1] == 499.0 and seconds == sorted(seconds) and len(seconds) > 20


def test_unreadable_lines_are_reported_by_number(tmp_path):
    path = tmp_path / "o.jsonl"
    OutageRecorder(path).record(DIRECTOR_TAKEOVER, 1.0, when=1.0)
    with open(path, "a") as f:
        f.write('{"kind": "director_takeover", "seconds": \n{"kind": "nope", "seconds": 1, "when": 1}\n')
    OutageRecorder(path).record(DIRECTOR_TAKEOVER, 2.0, when=2.0)
    log = read_outages(path)
    assert [o.seconds for o in log.outages] == [1.0, 2.0]
    assert log.unreadable == (2, 3)


def test_absent_file_is_an_empty_log(tmp_path):
    assert read_outages(tmp_path / "none.jsonl").outages == ()


def _writer(path: str, n: int) -> None:
    rec = OutageRecorder(path, max_bytes=8192)
    for i in range(n):
        rec.record(DIRECTOR_TAKEOVER, float(i), detail="x" * 40)


def test_concurrent_writers_never_tear_a_line(tmp_path):
    path = str(tmp_path / "o.jsonl")
    procs = [multiprocessing.Process(target=_writer, args=(path, 150)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    log = read_outages(path)
    assert log.unreadable == () and len(log.outages) > 10
