"""What `lvsmail director status` shows people and scripts."""

import socket

from lvsmail.console.status import as_json, as_text
from lvsmail.ipvs.model import (
    F_PERSISTENT,
    Counters,
    DestEntry,
    DestKey,
    DestSettings,
    ServiceEntry,
    ServiceKey,
    ServiceSettings,
    Timeouts,
)

SMTP = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.33", 25)
FWM6 = ServiceKey(socket.AF_INET6, fwmark=3)


def table():
    smtp = ServiceEntry(ServiceSettings("wlc", F_PERSISTENT, 120, 0xFFFFFF00),
                        counters=Counters(conns=5, inbytes=123456))
    smtp.dests[DestKey("198.51.100.35", 25)] = DestEntry(DestSettings("tun", 1), active=3, inactive=1,
                                                         counters=Counters(conns=3))
    smtp.dests[DestKey("198.51.100.20", 25)] = DestEntry(DestSettings("dr", 0), active=0, inactive=2)
    fwm = ServiceEntry(ServiceSettings("rr", netmask=128),
                       {DestKey("2001:db8::20", 0): DestEntry(DestSettings("nat", 2))})
    return {FWM6: fwm, SMTP: smtp}


def test_text_has_ipvsadm_names_flags_and_counts():
    text = as_text(table(), Timeouts(900, 120, 300))
    lines = text.splitlines()
    assert any(line.startswith("TCP 192.0.2.33:25 wlc persistent 120 mask 255.255.255.0") for line in lines)
    rs = next(line for line in lines if "198.51.100.35:25" in line)
    assert rs.split()[2:6] == ["Tunnel", "1", "3", "1"]
    assert "[2001:db8::20]:0" in text and "Masq" in text
    assert "123K" in text  # bytes shortened for the eye
    assert lines[-1] == "Timeout (tcp tcpfin udp): 900 120 300"


def test_real_servers_are_sorted_by_address():
    text = as_text(table())
    assert text.index("198.51.100.20:25") < text.index("198.51.100.35:25")


def test_json_is_stable_plain_data():
    data = as_json(table(), Timeouts(900, 120, 300))
    smtp = next(s for s in data["services"] if s["key"] == "TCP 192.0.2.33:25")
    assert (smtp["protocol"], smtp["address"], smtp["port"], smtp["fwmark"]) == ("tcp", "192.0.2.33", 25, 0)
    assert (smtp["persistent"], smtp["netmask"], smtp["stats"]["conns"]) == (120, "255.255.255.0", 5)
    assert [(r["address"], r["forwarding"], r["weight"], r["active"]) for r in smtp["realservers"]] == [
        ("198.51.100.20", "dr", 0, 0), ("198.51.100.35", "tun", 1, 3)]
    fwm = next(s for s in data["services"] if s["fwmark"] == 3)
    assert ((fwm["family"], fwm["protocol"], fwm["address"], fwm["port"], fwm["netmask"])
            == ("inet6", None, None, None, "128"))
    assert data["timeouts"] == {"tcp": 900, "tcpfin": 120, "udp": 300}


def test_health_is_shown_and_removed_servers_are_listed():
    import time as _t

    from lvsmail.console.status import as_json, as_text

    now = _t.time()
    key = "TCP 192.0.2.33:25"
    health = {
        (key, "198.51.100.35", 25): {"up": True, "since": now - 30, "latency": 0.012, "last_failure": "",
                                      "weight": 1, "quiescent": False, "check": "smtp", "verify": True},
        (key, "198.51.100.36", 25): {"up": False, "since": now - 300, "latency": 2.0,
                                      "last_failure": "smtp 198.51.100.36:25: greeting 421 4.3.2 busy",
                                      "weight": 4, "quiescent": False, "check": "smtp", "verify": False},
    }
    text = as_text(table(), None, health)
    assert "up for 30s, smtp check 12 ms, weight 1 configured / 1 in kernel" in text
    assert "198.51.100.36:25" in text and "down for 5m" in text and "TLS not verified" in text
    assert "last failure: smtp 198.51.100.36:25: greeting 421 4.3.2 busy" in text
    data = as_json(table(), None, health)
    rs = {r["address"]: r for r in data["services"][0]["realservers"]} if data["services"][0]["key"] == key else \
        {r["address"]: r for r in data["services"][1]["realservers"]}
    assert rs["198.51.100.36"]["weight"] is None and rs["198.51.100.36"]["health"]["health"] == "down"
    assert rs["198.51.100.35"]["health"]["effective_weight"] == 1
    assert rs["198.51.100.20"]["health"] is None  # not checked
