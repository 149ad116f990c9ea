"""The files a director publishes: the health file's rate limit, its content, ownership, reload and profile records."""

import asyncio
import json
import logging
import socket

from lvsmail.config import parse_cluster
from lvsmail.director.published import (
    HEALTH_FILE_PERIOD,
    HealthFile,
    health_document,
    profile_document,
    reload_document,
    save,
    save_owned,
)
from lvsmail.director.table import load_owned
from lvsmail.health.state import HealthState
from lvsmail.ipvs.model import ServiceKey
from lvsmail.spec import CheckSpec
from lvsmail.statefiles import StateDir
from support import until
from support.cluster import cluster_yaml, service

SPEC = parse_cluster(cluster_yaml(service(), check={"type": "connect"}, name="pub"))


class Clock:
    """A settable monotonic clock."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_health_file_period_is_one_second():
    assert HEALTH_FILE_PERIOD == 1.0 and HealthFile(None, dict, Clock()).period == 1.0


def test_health_file_is_written_at_most_once_a_period_and_a_deferred_write_comes_later(tmp_path):
    clock, writes = Clock(), []
    path = tmp_path / "pub.health.json"

    def document():
        writes.append(clock.t)
        return {"n": len(writes)}

    async def go():
        health = HealthFile(path, document, clock, period=0.2)
        health.save()
        assert writes == [1000.0] and json.loads(path.read_text()) == {"n": 1}
        clock.t += 0.05
        health.save()  # too soon: deferred, not dropped
        health.save()  # and only one deferred write however many are asked
        assert writes == [1000.0] and health.deferred
        await until(lambda: len(writes) == 2, timeout=2.0)  # the timer runs 0.15 s later (real loop time)
        assert not health.deferred and json.loads(path.read_text()) == {"n": 2}
        health.save(now=True)  # a final write is never deferred
        assert len(writes) == 3 and not health.deferred

    asyncio.run(go())


def test_a_final_write_replaces_the_deferred_one(tmp_path):
    clock, writes = Clock(), []

    async def go():
        health = HealthFile(tmp_path / "h.json", lambda: writes.append(clock.t) or {}, clock, period=0.1)
        health.save()
        clock.t += 0.01
        health.save()
        assert health.deferred
        health.save(now=True)
        assert not health.deferred
        await asyncio.sleep(0.2)  # the cancelled timer never writes
        return writes

    assert len(asyncio.run(go())) == 2


def test_health_document_lists_checked_servers_with_wall_clock_since():
    state = HealthState.initial(CheckSpec(type="connect"), 90.0)
    doc = health_document(SPEC, {("smtp", "198.51.100.20", 25): state}, 100.0, [{"address": "x"}])
    assert doc["cluster"] == "pub" and doc["joined"] == [{"address": "x"}]
    [entry] = doc["realservers"]  # the other server has no state: not listed
    assert (entry["name"], entry["address"], entry["port"], entry["check"], entry["up"]) == (
        "smtp", "198.51.100.20", 25, "connect", True)
    assert entry["service"] == "TCP 192.0.2.33:25"
    assert abs((doc["written"] - entry["since"]) - 10.0) < 1e-6  # began 10 s before the write


def test_a_failed_write_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="lvsmail.director"):
        save(blocker / "sub" / "x.json", {"a": 1})  # a file where a directory should be
    assert f"cannot write {blocker / 'sub' / 'x.json'}" in caplog.text


def test_ownership_round_trips_and_an_unreadable_record_is_a_warning(tmp_path):
    state = StateDir.of(tmp_path, "/etc/lvsmail/mail.yaml")
    assert load_owned(state) == (set(), None)
    keys = {ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25), ServiceKey(socket.AF_INET6, fwmark=7)}
    save_owned(state.owned, keys)
    assert load_owned(state) == (keys, None)
    assert json.loads(state.owned.read_text())[0] == {"af": socket.AF_INET, "protocol": 6, "addr": "192.0.2.33",
                                                      "port": 25, "fwmark": 0}
    state.owned.write_text("[{\"nonsense\": 1}]")
    owned, warning = load_owned(state)
    assert owned == set() and warning.startswith(f"{state.owned}: ignoring unreadable ownership record")


def test_reload_and_profile_records():
    assert reload_document("mail", 1.0, 2.5, None) == {"cluster": "mail", "started": 1.0, "finished": 2.5,
                                                        "ok": True, "error": None}
    assert reload_document("mail", 1.0, 2.5, "bad")["ok"] is False
    profile = profile_document(SPEC, {"net.ipv4.vs.conntrack": 0}, None)
    assert (profile["cluster"], profile["wanted"], profile["sync"]) == ("pub", {"net.ipv4.vs.conntrack": 0}, None)
