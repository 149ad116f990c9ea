"""One dashboard frame from a director's status: lines of styled text cut to the terminal.

The frame is built as a list of lines (rich ``Text``) rather than nested
tables so that it fits an 80x24 terminal exactly: each line is cropped to
the width, and when the services do not fit, the list is cut with a line
saying how many were left out. The same lines, without styles, are the
plain-text output for pipes and bug reports.

Layout (80 columns)::

    14:02:10 seed | VRRP VI_1 MASTER prio 150 peer 198.51.100.2 | sync master eth1
    ↑↓ select  d drain  e enable  r re-check  / f filter  q quit
    smtp TCP 192.0.2.33:25 wlc persist 300 2/3 ok 15.0 conn/s in 15.0K/s out 1.5K/s
      HEALTH    SERVER                   SINCE    LAT  WEIGHT  ACT/INACT  CONN/S
    ▶ up        mx1 198.51.100.20:25       11m    4ms     3/3     4/12     ▁▄▅▄█▂▄▅
      down      198.51.100.32:25           42s    4ms     1/-     0/0      ▁▁▁▁▁▁▁▁
        └ smtp 198.51.100.32:25: greeting 421 4.3.2 busy
    -- events --
    14:01:28 health   smtp 198.51.100.32:25 down: smtp 198.51.100.32:25: greeting 4…
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from rich.text import Text

SPARK = "▁▂▃▄▅▆▇█"
#: Samples kept per real server for its sparkline.
HISTORY = 8
BADGE_STYLE = {"up": "bold green", "down": "bold white on red", "draining": "bold black on yellow",
               "quiescent": "bold yellow", "fallback": "bold magenta", "unchecked": "cyan"}
EVENT_STYLE = {"health": "red", "vrrp": "magenta", "kernel": "blue", "operator": "yellow", "reload": "cyan"}
KEYS = "↑↓ select  d drain  e enable  r re-check  / f filter  q quit"


@dataclass
class Rates:
    """Connection and byte rates from successive frames' counters (the kernel's own estimate at first)."""

    previous: dict = field(default_factory=dict)  # key -> (time, conns, inbytes, outbytes)
    rates: dict = field(default_factory=dict)  # key -> (conn/s, in B/s, out B/s)
    history: dict = field(default_factory=lambda: collections.defaultdict(
        lambda: collections.deque(maxlen=HISTORY)))

    def update(self, status: dict, now: float | None = None) -> None:
        """Take one status: per service and real server, rates since the last one."""
        now = time.monotonic() if now is None else now
        for svc in status["services"]:
            self._one(("svc", svc["name"]), svc["stats"], now)
            for rs in svc["realservers"]:
                key = ("rs", svc["name"], rs["address"], rs["port"])
                rate = self._one(key, rs["stats"], now)
                self.history[key].append(rate[0])

    def _one(self, key, stats: dict | None, now: float) -> tuple[float, float, float]:
        if stats is None:
            self.previous.pop(key, None)
            self.rates[key] = (0.0, 0.0, 0.0)
            return self.rates[key]
        prev = self.previous.get(key)
        self.previous[key] = (now, stats["conns"], stats["inbytes"], stats["outbytes"])
        if prev is None or now <= prev[0] or stats["conns"] < prev[1]:
            rate = (float(stats["cps"]), float(stats["inbps"]), float(stats["outbps"]))  # first look or reset
        else:
            dt = now - prev[0]
            rate = ((stats["conns"] - prev[1]) / dt, max(0, stats["inbytes"] - prev[2]) / dt,
                    max(0, stats["outbytes"] - prev[3]) / dt)
        self.rates[key] = rate
        return rate


@dataclass
class UI:
    """What the person at the dashboard has chosen: filter, selected server, a pending question, a message."""

    filter: str = ""
    selected: int = 0
    prompt: str = ""  # a question or the filter being typed, shown above the events
    message: str = ""  # the outcome of the last action
    typing: bool = False  # "/" was pressed: keys go to the filter


def visible(status: dict, ui: UI) -> list[dict]:
    """The services the filter lets through (by name, substring, case-insensitive)."""
    f = ui.filter.lower()
    return [s for s in status["services"] if not f or f in s["name"].lower()]


def servers(status: dict, ui: UI) -> list[tuple[dict, dict]]:
    """(service, real server) pairs in screen order: what ↑/↓ move through."""
    return [(s, r) for s in visible(status, ui) for r in s["realservers"]]


def frame(status: dict | None, ui: UI, rates: Rates, width: int = 80, height: int = 24,
          error: str | None = None, now: float | None = None) -> list[Text]:
    """The lines of one frame, each at most ``width`` cells, at most ``height`` lines."""
    now = time.time() if now is None else now
    head = [_header(status, error, now), Text(KEYS + (f"   filter: {ui.filter}" if ui.filter else ""), style="dim")]
    body: list[Text] = []
    selected = None
    if status is not None:
        pairs = servers(status, ui)
        if pairs:
            ui.selected = max(0, min(ui.selected, len(pairs) - 1))
            selected = pairs[ui.selected][1]
        for svc in visible(status, ui):
            body += _service(svc, rates, selected, now)
        if not body:
            body.append(Text(f"no service matches filter {ui.filter!r}", style="yellow"))
    tail: list[Text] = []
    if ui.prompt:
        tail.append(Text(ui.prompt, style="bold reverse"))
    elif ui.message:
        tail.append(Text(ui.message, style="bold"))
    events = (status or {}).get("events") or []
    room = height - len(head) - len(tail) - len(body) - 1
    n_events = max(1, min(len(events), 5, room)) if events else 0
    if events:
        tail = [Text("-- events --", style="dim")] + [_event(e) for e in events[-n_events:]] + tail
    space = height - len(head) - len(tail)
    if len(body) > space:
        cut = len(body) - space + 1
        body = body[:space - 1] + [Text(f"… {cut} more lines (filter with / or f)", style="dim")]
    lines = head + body + tail
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return lines[:height]


def _header(status: dict | None, error: str | None, now: float) -> Text:
    t = Text(time.strftime("%H:%M:%S ", time.localtime(now)), style="dim")
    if status is None:
        t.append("lvsmail dashboard", style="bold")
        t.append(f"  {error or 'connecting…'}", style="bold red")
        return t
    t.append(status["cluster"], style="bold")
    fo = status.get("failover")
    if fo and fo.get("instances"):
        for inst in fo["instances"]:
            role = inst["role"].upper()
            t.append(" | VRRP ")
            t.append(f"{inst['name']} {role}", style="bold green" if role == "MASTER" else
                     "bold red" if role == "FAULT" else "bold yellow")
            t.append(f" prio {inst['priority']}")
            if inst.get("peer"):
                t.append(f" peer {inst['peer']}")
    else:
        t.append(" | no VRRP", style="dim")
    sync = status.get("sync")
    if sync and sync.get("role"):
        r = sync["role"]
        t.append(f" | sync {r['role']} {r['interface']}", style="red" if r.get("last_error") else "")
    elif sync and sync.get("daemons"):
        t.append(" | sync " + ",".join(f"{d['state']} {d['interface']}" for d in sync["daemons"]))
    if error:
        t.append(f"  {error}", style="bold red")
    return t


def _service(svc: dict, rates: Rates, selected: dict | None, now: float) -> list[Text]:
    t = Text()
    t.append(f"{svc['name']} ", style="bold cyan")
    where = f"FWM {svc['fwmark']}" if svc["fwmark"] is not None else \
        f"{svc['protocol'].upper()} {_hp(svc['vip'], svc['port'])}"
    t.append(f"{where} {svc['scheduler']}")
    if svc["persistent"]:
        t.append(f" persist {svc['persistent']}")
    total = sum(1 for r in svc["realservers"] if r["member"] != "fallback")
    t.append(f" {svc['healthy']}/{total} ok", style="green" if svc["healthy"] else "bold red")
    if not svc["in_kernel"]:
        t.append("  NOT IN KERNEL", style="bold red")
    cps, inb, outb = rates.rates.get(("svc", svc["name"]), (0.0, 0.0, 0.0))
    t.append(f" {cps:.1f} conn/s in {_bytes(inb)}/s out {_bytes(outb)}/s")
    lines = [t, Text(f"  {'HEALTH':<10}{'SERVER':<24}{'SINCE':>6}{'LAT':>7}{'WEIGHT':>8}{'ACT/INACT':>11}  CONN/S",
                     style="dim")]
    for rs in svc["realservers"]:
        lines += _server(svc, rs, rates, rs is selected, now)
    return lines


def _server(svc: dict, rs: dict, rates: Rates, selected: bool, now: float) -> list[Text]:
    t = Text("▶ " if selected else "  ", style="bold" if selected else "")
    badge = rs["health"]
    t.append(f"{badge:<9}", style=BADGE_STYLE.get(badge, ""))
    t.append(" ")
    hp = _hp(rs["address"], rs["port"])
    label = f"{rs['name']} {hp}" if rs.get("name") else hp
    if rs["member"] == "joined":
        label += "*"
    t.append(f"{label[:23]:<24}", style="reverse" if selected else "")
    since = "-" if rs["since"] is None else _age(now - rs["since"])
    lat = "-" if rs["latency"] is None else _ms(rs["latency"])
    eff = "-" if rs["effective_weight"] is None else rs["effective_weight"]
    weight = f"{rs['configured_weight']}/{eff}"
    t.append(f"{since:>6}{lat:>7}{weight:>8}{rs['active']:>6}/{rs['inactive']:<5}")
    t.append("  " + sparkline(rates.history.get(("rs", svc["name"], rs["address"], rs["port"]), [])), style="cyan")
    out = [t]
    if rs["last_failure"] and badge in ("down", "quiescent"):
        out.append(Text(f"    └ {rs['last_failure']}", style="red"))
    return out


def _event(e: dict) -> Text:
    t = Text(time.strftime("%H:%M:%S ", time.localtime(e["at"])), style="dim")
    t.append(f"{e['kind']:<8} ", style=EVENT_STYLE.get(e["kind"], ""))
    t.append(e["text"])
    return t


def sparkline(values) -> str:
    """Eight levels, scaled to the largest value shown (all zero: the lowest bar)."""
    values = list(values)
    top = max(values, default=0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values)


def _hp(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.0f}s"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"
