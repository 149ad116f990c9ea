"""The director's local API against the in-memory kernel: status, drain/enable/weight, recheck, events."""

import asyncio
import json
import socket
import stat

import pytest
from test_registration_limits import LoopErrors, nothing_unhandled  # the loop-handler and log checks

from lvsmail.config import parse_cluster
from lvsmail.console.client import APIError, Client, find_socket, socket_path
from lvsmail.console.overrides import resolve
from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.ipvs.model import ServiceKey
from support import ScriptedChecks, until
from support.cluster import cluster_yaml, service

SMTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)

MX1 = {"address": "198.51.100.20", "weight": 3, "name": "mx1"}


def api_cluster(realservers=(MX1, "198.51.100.32")) -> str:
    """One checked SMTP service; mx1 weighs 3."""
    return cluster_yaml(service(forwarding="tun", persistent=300, quiescent=False, realservers=realservers,
                                check={"type": "smtp", "interval": 0.05, "timeout": 0.5}))


CLUSTER = api_cluster()


def busy_checks() -> ScriptedChecks:
    """Checks that fail at the greeting, as a busy server answers."""
    return ScriptedChecks(("greeting 421 4.3.2 busy", "greeting"), down_latency=0.002)


def weights(kernel):
    return {k.addr: d.settings.weight for k, d in kernel.table[SMTP].dests.items()}


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    return path, tmp_path / "state"


async def start(path, state, kernel, checks):
    d = Director(str(path), kernel, repair_interval=30, state_dir=str(state), engine_options={"checker": checks})
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 5)
    return d, task


async def call(sock, request, **args):
    """One request through the blocking client, off the loop the director runs on."""
    def go():
        with Client(sock) as c:
            return c.call(request, **args)
    return await asyncio.to_thread(go)


def rows(status):
    return {r["address"]: r for s in status["services"] for r in s["realservers"]}


def test_status_over_the_socket_shows_health_weights_and_service(setup):
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert find_socket(state) == sock
        await until(lambda: all(s.checked for s in d.engine.states.values()))
        status = (await call(sock, "status"))["status"]
        svc = status["services"][0]
        assert (svc["vip"], svc["port"], svc["scheduler"], svc["persistent"], svc["forwarding"]) == \
            ("192.0.2.33", 25, "wlc", 300, "tun")
        r = rows(status)
        assert r["198.51.100.20"]["health"] == "up" and r["198.51.100.20"]["label"] == "mx1"
        assert (r["198.51.100.20"]["configured_weight"], r["198.51.100.20"]["effective_weight"]) == (3, 3)
        assert r["198.51.100.32"]["member"] == "static" and r["198.51.100.32"]["latency"] == 0.001
        checks.down.add("198.51.100.32")
        await until(lambda: "198.51.100.32" not in weights(kernel))
        r = rows((await call(sock, "status"))["status"])
        assert r["198.51.100.32"]["health"] == "down" and not r["198.51.100.32"]["in_kernel"]
        assert "greeting 421" in r["198.51.100.32"]["last_failure"]
        events = (await call(sock, "status"))["status"]["events"]
        assert any(e["kind"] == "health" and e["up"] is False for e in events)
        assert any(e["kind"] == "kernel" and "198.51.100.32" in e["text"] for e in events)
        d.request_stop()
        await task
        assert not sock.exists()

    asyncio.run(go())


def test_drain_survives_a_restart_and_enable_restores_the_weight(setup):
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        reply = await call(sock, "drain", target="mx1")
        assert reply["servers"] == [{"service": "smtp", "address": "198.51.100.20", "port": 25, "health": "draining",
                                     "configured_weight": 3, "effective_weight": 0, "active": 0, "inactive": 0}]
        assert weights(kernel) == {"198.51.100.20": 0, "198.51.100.32": 1}
        d.request_stop()
        await task
        executed = len(kernel.executed)
        # A restarted director programs the drain from its first table: no moment at weight 3.
        d, task = await start(path, state, kernel, checks)
        assert weights(kernel)["198.51.100.20"] == 0 and len(kernel.executed) == executed
        await call(sock, "enable", target="198.51.100.20:25", service="smtp")
        assert weights(kernel) == {"198.51.100.20": 3, "198.51.100.32": 1}
        await call(sock, "weight", target="198.51.100.32", weight=7)
        assert weights(kernel)["198.51.100.32"] == 7
        assert json.loads((state / "cluster.overrides.json").read_text())[0]["weight"] == 7
        d.request_stop()
        await task

    asyncio.run(go())


def test_a_drained_server_that_fails_stays_out_and_returns_drained(setup):
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        await call(sock, "drain", target="198.51.100.32")
        checks.down.add("198.51.100.32")
        await until(lambda: "198.51.100.32" not in weights(kernel))
        checks.down.clear()
        await until(lambda: "198.51.100.32" in weights(kernel))
        assert weights(kernel)["198.51.100.32"] == 0  # health brought it back, the operator's drain holds
        d.request_stop()
        await task

    asyncio.run(go())


def test_bad_requests_are_refused_and_change_nothing(setup):
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        before = weights(kernel)
        for request, args, message in [
            ("drain", {"target": "198.51.100.99"}, "no real server 198.51.100.99"),
            ("drain", {"target": "mx1", "service": "imap"}, "no service named 'imap'"),
            ("weight", {"target": "mx1", "weight": -1}, "weight must be an integer 0..65535"),
            ("weight", {"target": "mx1", "weight": "3"}, "weight must be an integer"),
            ("flush", {}, "unknown request 'flush'"),
        ]:
            with pytest.raises(APIError, match=message):
                await call(sock, request, **args)
        assert weights(kernel) == before
        assert not (state / "cluster.overrides.json").exists()

        def raw():
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(b"not json\n")
                return json.loads(s.makefile().readline())
        reply = await asyncio.to_thread(raw)
        assert reply["ok"] is False and "Expecting value" in reply["error"]
        d.request_stop()
        await task

    asyncio.run(go())


def test_recheck_runs_the_check_now_and_the_event_stream_follows(setup):
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"request": "events"}\n')
        assert json.loads(await reader.readline())["ok"] is True
        calls = checks.calls
        reply = await call(sock, "recheck", target="mx1")
        assert checks.calls > calls
        assert reply["results"][0]["ok"] is True and reply["results"][0]["reason"] == "smtp 198.51.100.20:25: ok"
        await call(sock, "drain", target="mx1")
        kinds = []
        while "kernel" not in kinds:
            line = await asyncio.wait_for(reader.readline(), 5)
            kinds.append(json.loads(line)["event"]["kind"])
        assert kinds[:2] == ["operator", "operator"]  # the re-check, then the drain
        writer.close()
        d.request_stop()
        await task

    asyncio.run(go())


def test_resolve_names_addresses_and_ports():
    spec = parse_cluster(CLUSTER)
    assert resolve(spec, "mx1") == [("smtp", "198.51.100.20", 25)]
    assert resolve(spec, "198.51.100.32:25") == [("smtp", "198.51.100.32", 25)]
    with pytest.raises(LookupError, match="no real server 198.51.100.32:26"):
        resolve(spec, "198.51.100.32:26")


def test_a_good_reload_is_one_event_and_a_rejected_one_none(setup):
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    def reloads(d):
        return [e["text"] for e in d.hub.last(100) if e["kind"] == "reload"]

    async def go():
        d, task = await start(path, state, kernel, checks)
        reloaded = state / "cluster.reload.json"
        path.write_text("cluster: test\nservices: [{name: x, vip: nonsense}]\n")
        d.request_reload()
        await until(lambda: reloaded.exists() and json.loads(reloaded.read_text())["ok"] is False)
        assert reloads(d) == [] and "rejected" in d.status_line()
        path.write_text(api_cluster(["198.51.100.32"]))
        d.request_reload()
        await until(lambda: json.loads(reloaded.read_text())["ok"] is True)
        assert reloads(d) == ["configuration reloaded: 1 services"]
        d.request_stop()
        await task

    asyncio.run(go())


def test_a_slow_subscriber_loses_the_oldest_events_and_is_told():
    from lvsmail.console.events import EventHub

    async def go():
        hub = EventHub()
        queue = hub.subscribe(size=2)
        for i in range(5):
            hub.publish("kernel", f"op {i}")
        assert [queue.get_nowait()["text"] for _ in range(2)] == ["op 3", "op 4"]
        assert hub.dropped(queue) == 3 and hub.dropped(queue) == 0
        hub.unsubscribe(queue)
        assert hub.subscribers == 0

    asyncio.run(go())


def test_director_status_and_realserver_commands_go_through_the_api(setup):
    from click.testing import CliRunner

    from lvsmail.commands.director import status as status_cmd
    from lvsmail.commands.realserver_ops import drain
    from lvsmail.ipvs.model import DestKey

    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    def cli(cmd, *args):
        return CliRunner().invoke(cmd, [*args, "--state-dir", str(state)])

    async def go():
        d, task = await start(path, state, kernel, checks)
        await until(lambda: all(s.checked for s in d.engine.states.values()))
        res = await asyncio.to_thread(cli, status_cmd, "--json")
        assert res.exit_code == 0, res.output
        data = json.loads(res.output)
        # The kernel-table view's fields, as without a director, plus the director's own snapshot.
        smtp = data["services"][0]
        assert (smtp["key"], smtp["persistent"]) == ("TCP 192.0.2.33:25", 300)
        assert {r["address"]: r["health"]["health"] for r in smtp["realservers"]} == {
            "198.51.100.20": "up", "198.51.100.32": "up"}
        assert data["director"]["cluster"] == "test" and set(data) >= {"timeouts", "kernel", "sync", "failover"}
        # An active session keeps --wait waiting until its timeout (exit 1) ...
        kernel.table[SMTP].dests[DestKey("198.51.100.20", 25)].active = 2
        res = await asyncio.to_thread(cli, drain, "mx1", "--wait", "--timeout", "0.6")
        assert res.exit_code == 1 and "2 active connections left after 0.6 s" in res.output
        assert "smtp 198.51.100.20:25: draining, weight 3 configured / 0 in kernel, 2 active" in res.output
        # ... and returns once the kernel says none is left.
        kernel.table[SMTP].dests[DestKey("198.51.100.20", 25)].active = 0
        res = await asyncio.to_thread(cli, drain, "mx1", "--wait", "--timeout", "5")
        assert res.exit_code == 0 and "no active connections left" in res.output
        res = await asyncio.to_thread(cli, status_cmd)
        assert "operator drain of smtp 198.51.100.20:25 (weight 0)" in res.output
        assert "TCP 192.0.2.33:25 wlc persistent 300" in res.output
        d.request_stop()
        await task

    asyncio.run(go())
    res = CliRunner().invoke(drain, ["mx1", "--state-dir", str(state)])
    assert res.exit_code == 2 and "no running director answers" in res.output


def test_reload_forgets_overrides_of_removed_servers_and_streams_end_with_their_client(setup):
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        await call(sock, "drain", target="mx1")
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"request": "events"}\n')
        await reader.readline()
        assert d.hub.subscribers == 1
        writer.close()
        await until(lambda: d.hub.subscribers == 0)  # noticed at EOF, not at the next event
        path.write_text(api_cluster(["198.51.100.32"]))
        await call(sock, "reload")
        await until(lambda: not (state / "cluster.overrides.json").read_text().strip("[]"))
        texts = [e["text"] for e in d.hub.last(20)]
        assert "override of smtp 198.51.100.20:25 dropped: no longer in the file" in texts
        d.request_stop()
        await task

    asyncio.run(go())


def test_a_state_directory_that_cannot_hold_the_socket_gets_it_on_tmpfs_with_a_pointer(tmp_path, monkeypatch):
    import lvsmail.console.api as api

    monkeypatch.setattr(api, "FALLBACK_DIR", tmp_path / "run")
    state = tmp_path / ("s" * 110)  # longer than an AF_UNIX path may be
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = find_socket(state)
        assert sock.parent == tmp_path / "run" and stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert (state / "cluster.sock.path").read_text().strip() == str(sock)
        reply = await call(sock, "status")
        assert reply["status"]["cluster"] == "test"
        d.request_stop()
        await task
        assert not sock.exists() and not (state / "cluster.sock.path").exists()

    asyncio.run(go())


# -- hostile input: every malformed request is answered, nothing ends in an unhandled exception ---------


async def raw_exchange(sock, data: bytes, timeout: float = 5.0) -> list[dict]:
    """Send ``data`` on a fresh connection, then read reply lines until the director closes."""
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=1 << 20)
    writer.write(data)
    await writer.drain()
    replies = []
    async with asyncio.timeout(timeout):
        while line := await reader.readline():
            replies.append(json.loads(line))
            if writer.can_write_eof():
                writer.write_eof()
    writer.close()
    return replies


def test_garbage_and_hostile_lines_each_get_an_error_reply(setup, caplog):
    """Binary garbage, invalid UTF-8, JSON that is not an object, deep nesting (RecursionError in json.loads
    before the limit) and a line over MAX_LINE: each is answered {"ok": false} with a reason, and the
    director still answers a good request afterwards."""
    from lvsmail.console import api

    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        before = weights(kernel)
        with LoopErrors() as errors:
            for data, word in [
                (b"\x00\xff\xfe garbage\n", "utf-8"),
                (b'"just a string"\n', "a request is a JSON object"),
                (b"[" * 30_000 + b"\n", "nested 30000 levels deep"),
                (b'{"request": "status", "events": ' + b"[" * 50 + b"]" * 50 + b"}\n", "nested 51 levels deep"),
                (b'{"request": "weight", "target": "mx1", "weight": ' + b"9" * 5000 + b"}\n", "digits"),
                (b"x" * (api.MAX_LINE + 10) + b"\n", f"longer than {api.MAX_LINE}"),
                (b'{"request": "drain", "target": {"a": 1}}\n', "target must be a non-empty string"),
            ]:
                replies = await raw_exchange(sock, data)
                assert replies and replies[0]["ok"] is False and word in replies[0]["error"], (data[:40], replies)
            assert (await call(sock, "status"))["ok"] is True
            assert nothing_unhandled(errors, caplog)
        assert weights(kernel) == before
        assert not (state / "cluster.overrides.json").exists()
        d.request_stop()
        await task

    caplog.set_level("WARNING")
    asyncio.run(go())


def test_a_slow_client_is_cut_at_the_line_deadline_and_others_are_served(setup, caplog, monkeypatch):
    """One byte every 0.1 s: the request line does not complete within LINE_DEADLINE, so the client gets an
    error reply and the connection closes; a status request meanwhile is answered at once."""
    from lvsmail.console import api

    monkeypatch.setattr(api, "LINE_DEADLINE", 0.5)
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        with LoopErrors() as errors:
            reader, writer = await asyncio.open_unix_connection(str(sock))
            started = asyncio.get_running_loop().time()
            answered = None

            async def drip():
                for byte in b'{"request": "status"}':
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)

            dripping = asyncio.create_task(drip())
            await asyncio.sleep(0.15)
            assert (await call(sock, "status"))["ok"] is True
            answered = asyncio.get_running_loop().time() - started
            reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
            cut = asyncio.get_running_loop().time() - started
            assert reply == {"ok": False, "error": "request line not complete within 0.5 s"}
            try:
                rest = await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:  # closed while the drip's next byte was in flight: a reset
                rest = b""
            assert rest == b""  # closed
            assert 0.4 < cut < 2.0 and answered < cut
            dripping.cancel()
            await asyncio.gather(dripping, return_exceptions=True)
            writer.close()
            assert nothing_unhandled(errors, caplog)
        d.request_stop()
        await task

    caplog.set_level("WARNING")
    asyncio.run(go())


def test_connections_over_the_cap_make_the_longest_idle_one_give_way(setup, caplog, monkeypatch):
    from lvsmail.console import api

    monkeypatch.setattr(api, "MAX_CLIENTS", 4)
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        with LoopErrors() as errors:
            idle = []
            for _ in range(4):
                idle.append(await asyncio.open_unix_connection(str(sock)))
                await asyncio.sleep(0.02)  # in order: the first is the one idle the longest
            assert (await call(sock, "status"))["ok"] is True  # the fifth connection is served
            first_reader = idle[0][0]
            told = json.loads(await asyncio.wait_for(first_reader.readline(), 5))
            assert told == {"ok": False, "error": "connection closed to make room for a new one"}
            assert await asyncio.wait_for(first_reader.read(), 5) == b""
            for reader, writer in idle[1:]:  # the others still work
                writer.write(b'{"request": "status", "events": 0}\n')
                assert json.loads(await asyncio.wait_for(reader.readline(), 5))["ok"] is True
            for _, writer in idle:
                writer.close()
            assert nothing_unhandled(errors, caplog)
        d.request_stop()
        await task

    caplog.set_level("ERROR")
    asyncio.run(go())


def rss_bytes() -> int:
    """This process's resident set now (VmRSS), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_an_event_stream_that_sends_data_is_not_buffered(setup):
    """After "events" the client should send nothing; what it sends anyway is read and dropped in chunks,
    so 32 MiB written by the client do not stay in the director's memory (a plain read() keeps them all)."""
    path, state = setup
    kernel, checks = FakeIPVS(), busy_checks()

    async def go():
        d, task = await start(path, state, kernel, checks)
        sock = socket_path(state, path)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"request": "events"}\n')
        assert json.loads(await reader.readline())["ok"] is True
        before = rss_bytes()
        chunk = b"z" * (1 << 20)
        for _ in range(32):
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
        await asyncio.sleep(0.1)
        grown = rss_bytes() - before
        assert grown < 16 << 20, f"RSS grew by {grown >> 20} MiB while the client wrote 32 MiB"
        writer.close()
        d.request_stop()
        await task

    asyncio.run(go())
