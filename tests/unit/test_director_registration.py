"""A director with the in-memory kernel and its registration API, driven by the real client over loopback TCP.

Members use addresses of 127.0.0.0/8 (every one of them is local on Linux), so the client can send
from the member's own address as it does on a real server, without root or namespaces.
"""

import asyncio
import json
import os
import socket

import pytest

from lvsmail.config import parse_cluster
from lvsmail.console import status as fmt
from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import DestKey, ServiceKey
from lvsmail.registration import client
from lvsmail.registration.protocol import Member, parse_token
from support.cluster import cluster_yaml, service

SMTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)
IMAP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 143)
SECRET = "registration-test-secret-0123456789abcdef"
MEMBER = "127.0.0.21"


def registration_cluster(port: int, token) -> str:
    """SMTP (tun) and IMAP (nat) on one real server, and a registration API on 127.0.0.1:``port``."""
    return cluster_yaml(
        service(forwarding="tun", realservers=["198.51.100.20"]),
        service("imap", 143, forwarding="nat", realservers=["198.51.100.20"]),
        extra=f"registration:\n  listen: 127.0.0.1:{port}\n  directors: [\"127.0.0.1:{port}\"]\n"
              f"  token_file: {token}\n  allowed_networks: [127.0.0.16/28]\n  drain_timeout: 5\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    token = tmp_path / "registration.key"
    token.write_text(f"secret={SECRET}\n")
    os.chmod(token, 0o600)
    path = tmp_path / "cluster.yaml"
    path.write_text(registration_cluster(free_port(), token))
    return path


def director(path, kernel, tmp_path):
    return Director(str(path), kernel, repair_interval=0.05, state_dir=str(tmp_path / "state"))


async def started(d: Director) -> asyncio.Task:
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 5)
    return task


def reg_spec(path):
    with open(path) as fh:
        return parse_cluster(fh.read()).registration


def token():
    return parse_token(f"secret={SECRET}\n".encode())


def test_register_restart_drain_deregister(cluster, tmp_path):
    kernel = FakeIPVS()
    spec = reg_spec(cluster)
    member = Member(MEMBER, ("smtp", "imap"), weight=4, ports=(("imap", 1143),), name="rs21")

    async def first_life():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        replies = await client.register(spec, member, token=token())
        assert [r.body["result"] for r in replies] == ["registered"]
        smtp = kernel.table[SMTP].dests[DestKey(MEMBER, 25)].settings
        imap = kernel.table[IMAP].dests[DestKey(MEMBER, 1143)].settings
        assert (smtp.forwarding, smtp.weight, imap.forwarding, imap.weight) == ("tun", 4, "nat", 4)
        again = await client.register(spec, member, token=token())
        assert again[0].body["result"] == "unchanged"
        d.request_stop()
        await task

    asyncio.run(first_life())

    kernel_after_reboot = FakeIPVS()  # a rebooted director starts from an empty kernel

    async def second_life():
        d = director(cluster, kernel_after_reboot, tmp_path)
        task = await started(d)
        dests = kernel_after_reboot.table[SMTP].dests
        assert dests[DestKey(MEMBER, 25)].settings.weight == 4  # restored from the members file
        assert DestKey("198.51.100.20", 25) in dests

        # Drain: weight 0 at once; the wait ends when the kernel reports no active connections.
        kernel_after_reboot.table[SMTP].dests[DestKey(MEMBER, 25)].active = 2
        seen = []
        result = await client.drain(spec, MEMBER, token=token(), timeout=0.3, interval=0.05,
                                    on_progress=lambda active, waited: seen.append(active))
        assert not result.drained and list(result.active.values()) == [2] and seen[0] == 2
        assert kernel_after_reboot.table[SMTP].dests[DestKey(MEMBER, 25)].settings.weight == 0
        assert kernel_after_reboot.table[IMAP].dests[DestKey(MEMBER, 1143)].settings.weight == 0
        kernel_after_reboot.table[SMTP].dests[DestKey(MEMBER, 25)].active = 0
        result = await client.drain(spec, MEMBER, token=token(), timeout=2, interval=0.05)
        assert result.drained and result.waited < 2

        # Status tells the joined member apart from the static one (published as the drain was applied).
        joined = fmt.read_joined(str(tmp_path / "state"))
        table = await kernel_after_reboot.dump(counters=True)
        rows = {(r["address"], r["port"]): r for s in fmt.as_json(table, None, {}, joined)["services"]
                for r in s["realservers"]}
        assert rows[(MEMBER, 25)]["member"] == "joined" and rows[(MEMBER, 25)]["drained"] is True
        assert rows[("198.51.100.20", 25)]["member"] == "static"
        text = fmt.as_text(table, None, {}, joined)
        assert "[joined rs21, draining]" in text

        await client.deregister(spec, MEMBER, token=token())
        assert DestKey(MEMBER, 25) not in kernel_after_reboot.table[SMTP].dests
        assert DestKey(MEMBER, 1143) not in kernel_after_reboot.table[IMAP].dests
        assert DestKey("198.51.100.20", 25) in kernel_after_reboot.table[SMTP].dests
        # Leaving twice is not an error: the second leave finds nothing to do.
        await client.deregister(spec, MEMBER, token=token())
        d.request_stop()
        await task

    asyncio.run(second_life())
    saved = json.loads((tmp_path / "state" / "cluster.members.json").read_text())
    assert saved == {"members": []}


def test_refused_registration_raises_with_the_directors_reason(cluster, tmp_path):
    kernel = FakeIPVS()
    spec = reg_spec(cluster)

    async def go():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        outside = Member("127.0.0.99", ("smtp",))  # outside 127.0.0.16/28
        with pytest.raises(client.RegistrationError, match="outside the allowed networks") as exc:
            await client.register(spec, outside, token=token())
        assert exc.value.replies[0].status == 403
        assert all(k.addr != "127.0.0.99" for k in kernel.table[SMTP].dests)
        d.request_stop()
        await task

    asyncio.run(go())


def test_unreachable_director_is_reported_not_hidden(cluster, tmp_path):
    spec = reg_spec(cluster)  # no director running on that port

    async def go():
        with pytest.raises(client.RegistrationError, match="failed on 1 of 1 directors") as exc:
            await client.register(spec, Member(MEMBER, ("smtp",)), token=token(), timeout=2)
        assert exc.value.replies[0].error

    asyncio.run(go())


def test_api_over_tls_verifies_the_directors_certificate(cluster, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "api.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    text = cluster.read_text().replace('["127.0.0.1:', '["https://127.0.0.1:')
    text += f"  tls_cert: {tmp_path / 'api.pem'}\n  tls_key: {tmp_path / 'api.pem'}\n  tls_ca: {tmp_path / 'ca.pem'}\n"
    cluster.write_text(text)
    spec = reg_spec(cluster)
    kernel = FakeIPVS()

    async def go():
        d = director(cluster, kernel, tmp_path)
        task = await started(d)
        await client.register(spec, Member(MEMBER, ("smtp",)), token=token())
        assert DestKey(MEMBER, 25) in kernel.table[SMTP].dests
        # A member that does not trust the director's CA does not talk to it at all.
        untrusting = parse_cluster(text.replace(f"  tls_ca: {tmp_path / 'ca.pem'}\n", "")).registration
        with pytest.raises(client.RegistrationError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.deregister(untrusting, MEMBER, token=token())
        assert DestKey(MEMBER, 25) in kernel.table[SMTP].dests
        d.request_stop()
        await task

    asyncio.run(go())


def test_key_file_others_can_read_is_refused_before_any_traffic(cluster, tmp_path):
    spec = reg_spec(cluster)
    os.chmod(spec.token_file, 0o644)

    async def go():
        with pytest.raises(client.RegistrationError, match="chmod 600") as exc:
            await client.register(spec, Member(MEMBER, ("smtp",)), timeout=2)
        assert exc.value.replies == []

    asyncio.run(go())
