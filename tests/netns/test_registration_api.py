"""The registration API over real TCP between namespaces: a director process, real servers as clients.

The director runs as its own process in the lab's director namespace with the in-memory kernel (this
host has no IPVS); real servers talk to its inside address from their own namespaces, so the source
address the director sees is the one the network delivered, not one a test chose.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from lvsmail.config import load_cluster
from lvsmail.net import netns
from lvsmail.registration import client
from lvsmail.registration.protocol import Member

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

REPO = Path(__file__).resolve().parents[2]
SECRET = "netns-registration-secret-0123456789abcdef"
API = ("198.51.100.1", 8730)  # the director's inside address in the lab topology

CLUSTER = """\
cluster: rgtest
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    forwarding: dr
    realservers: [198.51.100.32]
registration:
  listen: [198.51.100.1:8730, 198.51.100.2:8730]  # the pair shares the file; .2 is not in this lab
  directors: [198.51.100.1:8730]
  token_file: {token}
  allowed_networks: [198.51.100.0/24]
"""

DIRECTOR = """\
import asyncio, logging, sys
from lvsmail.director.daemon import Director, serve
from lvsmail.ipvs.fake import FakeIPVS
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
asyncio.run(serve(Director(sys.argv[1], FakeIPVS(), state_dir=sys.argv[2], repair_interval=0.5)))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The DR lab topology (namespaces prefixed rg-) with a director process serving the API."""
    from lvsmail.lab.topology import Topology

    try:
        netns.create_netns(f"rg-probe{os.getpid()}")
        netns.remove_netns(f"rg-probe{os.getpid()}")
    except OSError as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    tmp = tmp_path_factory.mktemp("rg")
    token = tmp / "registration.key"
    token.write_text(f"secret={SECRET}\n")
    token.chmod(0o600)
    config = tmp / "rgtest.yaml"
    config.write_text(CLUSTER.format(token=token))
    (tmp / "director.py").write_text(DIRECTOR)
    with Topology("dr", reals=2, prefix=f"rg-{os.getpid() % 100000}") as topo:
        log = open(tmp / "director.log", "wb")
        proc = topo.popen(topo.director, [sys.executable, str(tmp / "director.py"), str(config), str(tmp / "state")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log)
        try:
            _wait_listening(topo, proc, tmp / "director.log")
            yield topo, load_cluster(config).registration, tmp
        finally:
            topo.stop(proc)
            log.close()


def _wait_listening(topo, proc, logfile: Path, timeout: float = 30.0) -> None:
    """Poll the API's port from a real server until it accepts (bounded), or fail with the director's log."""
    def connects() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(API) == 0

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"director exited with {proc.returncode}:\n{logfile.read_text()}")
        if topo.call(topo.reals[0], connects):
            return
        time.sleep(0.2)
    pytest.fail(f"registration API not listening within {timeout:g} s:\n{logfile.read_text()}")


def _in(topo, node, coro_fn, *args, **kwargs):
    """Run a client coroutine in a real server's namespace."""
    return topo.call(node, lambda: asyncio.run(coro_fn(*args, **kwargs)))


def _joined(tmp: Path) -> list[dict]:
    """What the director publishes for `director status` (joined members with their service)."""
    try:
        return json.loads((tmp / "state" / "rgtest.health.json").read_text()).get("joined", [])
    except (OSError, ValueError):
        return []


def _eventually(fn, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    return fn()


def test_member_registers_from_its_own_address_and_is_persisted(lab):
    topo, spec, tmp = lab
    rs1 = topo.reals[0]
    replies = _in(topo, rs1, client.register, spec, Member(rs1.address, ("smtp",), name="rs1"))
    assert [r.body["result"] for r in replies] in (["registered"], ["unchanged"])
    members = json.loads((tmp / "state" / "rgtest.members.json").read_text())["members"]
    assert [m["address"] for m in members] == [rs1.address]
    joined = _eventually(lambda: _joined(tmp))
    assert [(j["address"], j["port"], j["name"]) for j in joined] == [(rs1.address, 25, "smtp")]
    log = (tmp / "director.log").read_text()
    assert "API listening on 198.51.100.1 port 8730" in log
    assert "not an address of this host, not listening there: 198.51.100.2" in log


def test_request_for_a_member_from_another_address_is_refused(lab):
    topo, spec, tmp = lab
    rs1, rs2 = topo.reals
    members_file = tmp / "state" / "rgtest.members.json"
    before = members_file.read_bytes() if members_file.exists() else None
    # rs2 signs correctly for rs1 (it holds the cluster secret) but the network delivers its own address.
    with pytest.raises(client.RegistrationError) as exc:
        _in(topo, rs2, client.deregister, spec, rs1.address, bind=False)
    reply = exc.value.replies[0]
    assert reply.status == 403 and f"sent from {rs2.address}" in reply.body["error"]
    assert (members_file.read_bytes() if members_file.exists() else None) == before
    assert f"refused 'DELETE' '/v1/members/{rs1.address}' from {rs2.address}" in (tmp / "director.log").read_text()


def test_drain_then_deregister_from_the_member_itself(lab):
    topo, spec, tmp = lab
    rs1 = topo.reals[0]
    _in(topo, rs1, client.register, spec, Member(rs1.address, ("smtp",), name="rs1"))
    result = _in(topo, rs1, client.drain, spec, rs1.address, timeout=5, interval=0.2)
    assert result.drained and list(result.active.values()) == [0]
    assert _eventually(lambda: [j for j in _joined(tmp) if j["drained"]])
    _in(topo, rs1, client.deregister, spec, rs1.address)
    members = json.loads((tmp / "state" / "rgtest.members.json").read_text())["members"]
    assert members == []
    assert _eventually(lambda: not _joined(tmp))  # status no longer lists it


def test_the_api_starts_when_its_address_appears_after_the_director(lab, tmp_path):
    """A director started before its inside address is configured (boot order) serves the API as soon as
    the address is there, without a reload: the lab's directors start while their links are wired."""
    topo, _, tmp = lab
    late = ("198.51.100.9", 8731)
    config = tmp_path / "late.yaml"
    config.write_text(CLUSTER.format(token=tmp / "registration.key").replace(
        "listen: [198.51.100.1:8730, 198.51.100.2:8730]", f"listen: [{late[0]}:{late[1]}]"))
    log = open(tmp_path / "director.log", "wb")
    proc = topo.popen(topo.director, [sys.executable, str(tmp / "director.py"), str(config), str(tmp_path / "state")],
                      cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log)

    def connects() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(late) == 0

    try:
        assert _eventually(lambda: "started when one of them is configured here" in
                           (tmp_path / "director.log").read_text(), 30), (tmp_path / "director.log").read_text()
        assert not topo.call(topo.reals[0], connects)
        topo.run(topo.director, ["ip", "addr", "add", f"{late[0]}/24", "dev", "eth1"])
        assert _eventually(lambda: topo.call(topo.reals[0], connects), 10), (tmp_path / "director.log").read_text()
        assert "registration: API listening on 198.51.100.9 port 8731" in (tmp_path / "director.log").read_text()
    finally:
        topo.stop(proc)
        log.close()
        topo.run(topo.director, ["ip", "addr", "del", f"{late[0]}/24", "dev", "eth1"], check=False)
