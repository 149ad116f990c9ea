"""Dashboard frames from status snapshots: what fits in 80x24, badges, rates, filter, keys."""

import pytest

pytest.importorskip("rich")
from lvsmail.console.dashboard.app import Dashboard, keys  # noqa: E402
from lvsmail.console.dashboard.view import UI, Rates, frame, sparkline  # noqa: E402

NOW = 1_800_000_000.0


def rs(address, health, *, name=None, weight=1, eff=1, active=0, inactive=0, conns=0, failure=None, member="static"):
    return {"name": name, "label": name or f"{address}:25", "address": address, "port": 25, "forwarding": "dr",
            "member": member, "member_name": None, "health": health, "up": health not in ("down", "quiescent"),
            "checked": True, "check": "smtp", "since": NOW - 300, "latency": 0.004, "last_failure": failure,
            "last_failure_at": None, "checks": 10, "transitions": 1, "configured_weight": weight,
            "effective_weight": eff, "override": None, "in_kernel": eff is not None, "active": active,
            "inactive": inactive, "persistent": 0,
            "stats": None if eff is None else {"conns": conns, "inpkts": 0, "outpkts": 0, "inbytes": conns * 1000,
                                               "outbytes": conns * 100, "cps": 0, "inbps": 0, "outbps": 0}}


def service(name, port, servers, conns=0):
    return {"name": name, "key": f"TCP 192.0.2.33:{port}", "family": "inet", "vip": "192.0.2.33", "protocol": "tcp",
            "port": port, "fwmark": None, "scheduler": "wlc", "persistent": 300, "netmask": None,
            "forwarding": "dr", "quiescent": False, "in_kernel": True,
            "stats": {"conns": conns, "inpkts": 0, "outpkts": 0, "inbytes": conns * 1000, "outbytes": conns * 100,
                      "cps": 0, "inbps": 0, "outbps": 0},
            "healthy": sum(1 for s in servers if s["health"] in ("up", "draining")), "realservers": servers}


def status(conns=0, services=None):
    return {"cluster": "seed", "config": "/etc/lvsmail/seed.yaml", "pid": 1, "at": NOW,
            "services": services or [service("smtp", 25, [
                rs("198.51.100.20", "up", name="mx1", weight=3, eff=3, active=4, inactive=12, conns=conns),
                rs("198.51.100.32", "down", eff=None, failure="smtp 198.51.100.32:25: greeting 421 4.3.2 busy"),
                rs("198.51.100.33", "draining", eff=0, active=2, conns=conns // 2),
            ], conns=conns)],
            "failover": {"instances": [{"name": "VI_1", "role": "master", "priority": 150, "master": "198.51.100.1",
                                        "transitions": 1, "since": NOW - 600, "peer": "198.51.100.2"}]},
            "sync": {"role": {"role": "master", "interface": "eth1", "last_error": None}, "daemons": [],
                     "error": None},
            "kernel": {"sysctls": [], "ok": True},
            "events": [{"at": NOW - 5, "kind": "health", "text": "smtp 198.51.100.32:25 down: greeting 421"}]}


def text(lines):
    return "\n".join(line.plain for line in lines)


def test_frame_fits_80x24_with_badges_weights_reason_header_and_events():
    rates = Rates()
    rates.update(status(conns=100), now=0.0)
    rates.update(status(conns=130), now=1.0)
    lines = frame(status(conns=130), UI(), rates, 80, 24, now=NOW)
    out = text(lines)
    assert len(lines) <= 24 and all(len(line.plain) <= 80 for line in lines)
    assert "00 seed | VRRP VI_1 MASTER prio 150 peer 198.51.100.2 | sync master eth1" in out
    assert "smtp TCP 192.0.2.33:25 wlc persist 300 2/3 ok 30.0 conn/s in 30.0K/s out 3.0K/s" in out
    mx1 = next(line for line in out.splitlines() if "mx1" in line)
    assert mx1.startswith("▶ up") and "5m" in mx1 and "4ms" in mx1 and "3/3" in mx1 and "4/12" in mx1
    down = next(line for line in out.splitlines() if "198.51.100.32" in line)
    assert down.split()[0] == "down" and "1/-" in down
    assert "└ smtp 198.51.100.32:25: greeting 421 4.3.2 busy" in out
    assert next(line for line in out.splitlines() if "198.51.100.33" in line).split()[0] == "draining"
    assert "-- events --" in out and "health   smtp 198.51.100.32:25 down" in out


def test_many_services_are_cut_with_a_note_and_the_footer_stays():
    many = [service(f"svc{i}", 1000 + i, [rs(f"198.51.100.{i}", "up")]) for i in range(20)]
    lines = frame(status(services=many), UI(), Rates(), 80, 24, now=NOW)
    out = text(lines)
    assert len(lines) == 24 and "more lines (filter with / or f)" in out and "-- events --" in out


def test_filter_shows_only_matching_services():
    both = [service("smtp", 25, [rs("198.51.100.20", "up")]), service("imap", 143, [rs("198.51.100.21", "up")])]
    out = text(frame(status(services=both), UI(filter="ima"), Rates(), 80, 24, now=NOW))
    assert "imap TCP" in out and "smtp TCP" not in out
    out = text(frame(status(services=both), UI(filter="pop"), Rates(), 80, 24, now=NOW))
    assert "no service matches filter 'pop'" in out


def test_no_director_is_said_in_the_header():
    out = text(frame(None, UI(), Rates(), 80, 24, error="director not answering: connection refused", now=NOW))
    assert "lvsmail dashboard  director not answering: connection refused" in out.splitlines()[0]


def test_sparkline_scales_to_the_largest_rate():
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([0, 5, 10]) == "▁▅█"


def test_keys_split_arrows_enter_escape_and_letters():
    assert keys("\x1b[Ad\x1b[By\r\x1b\x7f/") == ["up", "d", "down", "y", "enter", "esc", "backspace", "/"]
    assert keys("\x1b[15~q") == ["q"]  # F5 is skipped whole


class FakeClient:
    path = "/nonexistent.sock"

    def __init__(self):
        self.calls = []

    def call(self, request, **args):
        self.calls.append((request, args))
        if request == "status":
            return {"ok": True, "status": status()}
        return {"ok": True, "servers": [{"health": "draining", "configured_weight": 3, "effective_weight": 0}]}

    def close(self):
        pass


def test_drain_key_asks_first_and_only_y_sends_it():
    client = FakeClient()
    app = Dashboard(client)
    app.fetch()
    app.key("d")
    assert app.ui.prompt == "Drain smtp 198.51.100.20:25 (mx1)? [y/n]"
    app.key("n")
    assert app.ui.message == "cancelled" and [c for c, _ in client.calls if c != "status"] == []
    app.key("down")
    app.key("down")
    app.key("d")
    app.key("y")
    assert ("drain", {"target": "198.51.100.33:25", "service": "smtp"}) in client.calls
    assert app.ui.message == "drained smtp 198.51.100.33:25: draining, weight 3/0"


def test_slash_types_a_filter_and_f_cycles_services():
    app = Dashboard(FakeClient())
    app.fetch()
    for k in ["/", "s", "m", "backspace", "m", "enter"]:
        app.key(k)
    assert app.ui.filter == "sm" and not app.ui.typing
    app.key("/")
    app.key("esc")
    assert app.ui.filter == ""
    app.key("f")
    assert app.ui.filter == "smtp"
    app.key("f")
    assert app.ui.filter == ""
    assert app.key("q") == "quit"


def test_the_filter_is_sent_to_the_director_and_f_still_cycles_every_service():
    client = FakeClient()
    app = Dashboard(client, service_filter="smt")
    app.fetch()
    assert client.calls[-1] == ("status", {"events": 10, "services": "smt"})
    app.key("f")  # the names come from one unfiltered status
    assert client.calls[-1] == ("status", {"events": 0}) and app.ui.filter == "smtp"
