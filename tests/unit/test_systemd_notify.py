"""The notify protocol against a real AF_UNIX datagram socket, as systemd's: the Notifier, then the director."""

import asyncio
import os
import socket
import time

import pytest

from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.systemd import Notifier, Pacer, StatusReporter, status_line
from support import ScriptedChecks, until  # the checker the test flips; polling, not sleeping
from support.cluster import cluster_yaml, service

CLUSTER = cluster_yaml(service(forwarding="tun", check={"type": "smtp", "interval": 0.05, "timeout": 0.5}),
                       service("http", 80, realservers=["198.51.100.20"]))


class Systemd:
    """The manager's end of $NOTIFY_SOCKET: a bound datagram socket that collects notifications with their time."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.setblocking(False)
        self.address = path
        self.got: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[dict[str, str]]:
        """Every notification received so far (also kept in ``got`` with its arrival time)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return [m for _, m in self.got]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.got.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[dict[str, str]]:
        """The notifications carrying ``key``."""
        return [m for m in self.drain() if key in m]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    manager = Systemd(str(tmp_path / "notify"))
    yield manager
    manager.close()


# -- the Notifier on its own -------------------------------------------------------------

def test_ready_reloading_stopping_and_status_reach_a_path_socket(systemd):
    n = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address})
    assert n.enabled and n.watchdog_interval is None
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.ready("2 services") and n.reloading() and n.stopping() and n.status("a\nb")
    ready, reloading, stopping, status = systemd.drain()
    assert ready == {"READY": "1", "STATUS": "2 services"}
    assert reloading["RELOADING"] == "1"
    # systemd >= 253 refuses RELOADING=1 without the CLOCK_MONOTONIC time of the reload.
    assert before <= int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert stopping["STOPPING"] == "1"
    assert status == {"STATUS": "a b"}  # a newline would start another assignment


def test_an_abstract_socket_is_named_with_an_at_sign():
    name = f"@lvsmail-test-{os.getpid()}-{time.monotonic_ns()}"
    manager = Systemd(name)
    try:
        assert Notifier(name).watchdog()
        assert manager.drain() == [{"WATCHDOG": "1"}]
    finally:
        manager.close()


def test_outside_systemd_nothing_is_sent_and_nothing_fails():
    n = Notifier.from_environment({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready("x") is False and n.watchdog() is False


def test_a_vanished_manager_is_reported_and_the_daemon_goes_on(tmp_path, caplog):
    n = Notifier(str(tmp_path / "gone"))
    assert n.ready() is False
    assert "not sent" in caplog.text and "READY" in caplog.text


@pytest.mark.parametrize("env, interval", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),                              # WatchdogSec=30s: ping every 15 s
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),         # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only(env, interval):
    n = Notifier.from_environment({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert n.watchdog_interval == interval


def test_the_variables_leave_the_environment_so_checks_and_hooks_cannot_notify(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_environment(unset=True)
    assert n.address == "/run/systemd/notify" and n.watchdog_interval == 15.0
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


def test_pacer_allows_one_message_a_period():
    p = Pacer(1.0)
    assert p.wait(10.0) == 0.0
    p.sent(10.0)
    assert p.wait(10.25) == pytest.approx(0.75) and p.wait(11.5) == 0.0


class _Recorder:
    """A notifier that records what it would send."""

    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []

    def ready(self, status=None):
        self.sent.append(("READY", status))

    def status(self, text):
        self.sent.append(("STATUS", text))

    def stopping(self, status="stopping"):
        self.sent.append(("STOPPING", status))


def test_status_reporter_sends_changes_paced_and_nothing_once_stopping():
    async def go():
        notifier, line = _Recorder(), ["1 service"]
        reporter = StatusReporter(notifier, lambda: line[0], period=0.05)
        reporter.publish()
        assert notifier.sent == []  # before READY=1, which carries the first line
        reporter.ready()
        line[0] = "2 services"
        reporter.publish()
        line[0] = "3 services"
        reporter.publish()  # the burst's last line goes out one period after READY=1, once
        assert notifier.sent == [("READY", "1 service")]
        await asyncio.sleep(0.1)
        assert notifier.sent == [("READY", "1 service"), ("STATUS", "3 services")]
        reporter.publish()  # unchanged: nothing
        line[0] = "4 services"
        reporter.publish()  # a period after the last one: at once
        line[0] = "5 services"
        reporter.publish()
        reporter.stopping()  # the due send is dropped: "stopping" stays the line
        await asyncio.sleep(0.1)
        reporter.publish()
        assert notifier.sent[2:] == [("STATUS", "4 services"), ("STOPPING", "stopping")]

    asyncio.run(go())


@pytest.mark.parametrize("roles, note, line", [
    ({}, None, "3 services, 11/12 real servers up"),
    ({"mail": "master", "web": "master"}, None, "3 services, 11/12 real servers up, VRRP MASTER"),
    ({"mail": "master", "web": "backup"}, None, "3 services, 11/12 real servers up, VRRP mail MASTER web BACKUP"),
    ({"mail": "fault"}, "reload at 10:00:00 rejected", "3 services, 11/12 real servers up, VRRP FAULT, "
                                                         "reload at 10:00:00 rejected"),
])
def test_status_line_says_services_real_servers_and_roles(roles, note, line):
    assert status_line(3, 11, 12, roles, note) == line


# -- the director under systemd ----------------------------------------------------------

class StallingIPVS(FakeIPVS):
    """The in-memory kernel, whose table read can be made to hang (a netlink reply that never comes)."""

    def __init__(self):
        super().__init__()
        self.stall = False
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def dump(self, counters: bool = False):
        if self.stall:
            self.stalled.set()
            await self.release.wait()
        return await super().dump(counters)


def _director(tmp_path, systemd, kernel, *, watchdog_usec=None, checks=None):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    return Director(str(path), kernel, repair_interval=30, state_dir=str(tmp_path / "state"),
                    engine_options={"checker": checks or ScriptedChecks()},
                    notifier=Notifier(systemd.address, watchdog_usec))


def test_director_reports_ready_reloading_ready_and_stopping_in_order(tmp_path, systemd):
    kernel = FakeIPVS()

    async def go():
        d = _director(tmp_path, systemd, kernel)
        task = asyncio.create_task(d.run())
        await until(lambda: systemd.with_key("READY"))
        assert set(kernel.table), "READY=1 only once the table is programmed"
        starting = [m["STATUS"] for _, m in systemd.got[:2]]
        assert starting == ["starting: programming the IPVS table (2 services, 3 real servers)",
                            "starting: health checks and registration"]
        assert systemd.got[2][1] == {"READY": "1", "STATUS": "2 services, 3/3 real servers up"}
        d.request_reload()
        await until(lambda: len(systemd.with_key("READY")) == 2)
        (tmp_path / "cluster.yaml").write_text("cluster: [broken\n")
        d.request_reload()
        await until(lambda: len(systemd.with_key("READY")) == 3)
        d.request_stop()
        await task

    asyncio.run(go())
    kinds = [next(iter(m)) for m in systemd.drain() if "WATCHDOG" not in m and set(m) != {"STATUS"}]
    assert kinds == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"]
    assert systemd.drain()[-1] == {"STOPPING": "1", "STATUS": "stopping"}  # the last word, not a late health line
    readies = systemd.with_key("READY")
    assert readies[1]["STATUS"] == "2 services, 3/3 real servers up"
    # A rejected reload still ends with READY=1 (systemd leaves "reloading"), and STATUS says so.
    assert "rejected, running the previous file" in readies[2]["STATUS"]


def test_status_follows_health_transitions_at_most_once_a_second(tmp_path, systemd):
    kernel, checks = FakeIPVS(), ScriptedChecks()

    async def go():
        asyncio.get_running_loop().add_reader(systemd.sock, systemd.drain)  # stamped on arrival
        d = _director(tmp_path, systemd, kernel, checks=checks)
        task = asyncio.create_task(d.run())
        await until(lambda: systemd.with_key("READY"))
        checks.down.add("198.51.100.20")
        await until(lambda: any(m.get("STATUS") == "2 services, 2/3 real servers up" for m in systemd.drain()))
        # Flapping for 1.5 s: the checks turn it up and down every 50 ms, systemd hears at most one line a second.
        loop = asyncio.get_running_loop()
        start, end = len(systemd.got), loop.time() + 1.5
        while loop.time() < end:
            checks.down ^= {"198.51.100.32"}
            await asyncio.sleep(0.12)
        checks.down.clear()
        await until(lambda: systemd.drain()[-1].get("STATUS") == "2 services, 3/3 real servers up", timeout=3)
        d.request_stop()
        await task
        return systemd.got[start:]

    flapping = [(t, m) for t, m in asyncio.run(go()) if set(m) == {"STATUS"}]
    assert len(flapping) >= 2, "the status line did not follow the flapping server"
    times = [t for t, _ in flapping]
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:])), times


def test_watchdog_pings_come_from_the_main_loop_at_half_the_interval(tmp_path, systemd):
    """WatchdogSec=0.2s: a ping every 0.1 s; none while a reload hangs, though the event loop still runs."""
    kernel = StallingIPVS()

    def pings(after=0.0):
        return [t for t, m in systemd.got if "WATCHDOG" in m and t > after]

    async def go():
        loop = asyncio.get_running_loop()
        loop.add_reader(systemd.sock, systemd.drain)  # each notification is stamped when it arrives
        d = _director(tmp_path, systemd, kernel, watchdog_usec=200_000)
        task = asyncio.create_task(d.run())
        await until(lambda: systemd.got)
        await asyncio.sleep(1.0)
        steady = pings()
        # A reload whose kernel read never returns: the main loop is stuck, the event loop is not.
        kernel.stall = True
        d.request_reload()
        await asyncio.wait_for(kernel.stalled.wait(), 5)
        hung_from, ticks = time.monotonic(), 0
        while time.monotonic() - hung_from < 0.6:
            await asyncio.sleep(0.02)
            ticks += 1
        during = pings(hung_from)
        kernel.stall = False
        kernel.release.set()
        await until(lambda: pings(hung_from + 0.6))  # the loop is back, so are the pings
        # A blocked event loop (a long synchronous call) sends nothing either: whatever is in the
        # socket right after the block was sent during it.
        loop.remove_reader(systemd.sock)
        systemd.drain()
        before = len(systemd.got)
        time.sleep(0.4)
        blocked = [m for m in systemd.drain()[before:] if "WATCHDOG" in m]
        d.request_stop()
        await task
        return steady, during, ticks, blocked

    steady, during, ticks, blocked = asyncio.run(go())
    gaps = [b - a for a, b in zip(steady, steady[1:])]
    assert len(steady) >= 6 and all(0.08 <= g <= 0.3 for g in gaps), gaps
    assert ticks >= 10 and during == [], "a hung main loop must not keep the watchdog happy"
    assert blocked == []


def test_vrrp_roles_reach_the_status_line(tmp_path, systemd):
    """The director reads each instance's role through the failover's ``roles()`` (a stand-in here)."""
    from types import SimpleNamespace

    kernel = FakeIPVS()

    async def go():
        d = _director(tmp_path, systemd, kernel)
        task = asyncio.create_task(d.run())
        await until(lambda: systemd.with_key("READY"))
        roles = {"mail": "master", "web": "master"}
        d.failover = SimpleNamespace(roles=lambda: dict(roles), stop=_nothing)
        line = d.status_line()
        roles["web"] = "init"  # an instance whose state machine is not running yet
        starting = d.status_line()
        d.request_stop()
        await task
        return line, starting

    line, starting = asyncio.run(go())
    assert line == "2 services, 3/3 real servers up, VRRP MASTER"
    assert starting == "2 services, 3/3 real servers up, VRRP mail MASTER web INIT"


async def _nothing():
    return None
