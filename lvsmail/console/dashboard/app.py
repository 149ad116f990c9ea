"""The dashboard's loop: fetch the director's status once per interval, draw it, act on keys.

It is a plain blocking loop (``select`` on the terminal with the time to the
next refresh as timeout) around the API's blocking client: one request a
second needs no event loop, and a key is answered at once. The screen is
rich's ``Live`` on the alternate screen, redrawn in place (no clearing, so
no flicker); the terminal is in cbreak mode while it runs and restored on
every way out.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import termios
import time
import tty

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from lvsmail.console.dashboard.view import UI, Rates, frame, servers

QUESTIONS = {"drain": "Drain", "enable": "Enable", "recheck": "Re-check"}
DONE = {"drain": "drained", "enable": "enabled", "recheck": "re-checked"}


class Dashboard:
    """State of one dashboard session: the connection, the last status, rates, and the person's choices."""

    def __init__(self, client, service_filter: str = "", interval: float = 1.0) -> None:
        self.client = client
        self.ui = UI(filter=service_filter)
        self.rates = Rates()
        self.interval = interval
        self.status: dict | None = None
        self.error: str | None = None
        self.fatal: str | None = None  # a reason to stop (the director refused our requests)
        self.pending: tuple[str, dict, dict] | None = None  # (request, service, real server) awaiting y/n
        self._typed = ""
        self._path = client.path  # reconnected to when the director restarts
        self.names: list[str] = []  # every service's name, for f (a filtered status has only some)

    # -- data --------------------------------------------------------------------------

    def fetch(self) -> None:
        """Ask the director for its status; a director that went away is retried on the next tick."""
        from lvsmail.console.client import APIError, Client

        try:
            if self.client is None:
                self.client = Client(self._path)
            # The filter goes to the director: with many real servers it answers only what is shown.
            args = {"services": self.ui.filter} if self.ui.filter else {}
            self.status = self.client.call("status", events=10, **args)["status"]
            if not args:
                self.names = [svc["name"] for svc in self.status["services"]]
            self.rates.update(self.status)
            self.error = None
        except (APIError, OSError, ValueError) as exc:
            if self.client is not None:
                self.client.close()
                self.client = None
            self.error = f"director not answering: {exc}"

    def lines(self, width: int, height: int) -> list[Text]:
        """The current frame."""
        return frame(self.status, self.ui, self.rates, width, height, self.error)

    # -- outputs -----------------------------------------------------------------------

    def print_once(self, plain: bool) -> None:
        """One frame: the whole status for a pipe, the terminal's size on a terminal."""
        self.fetch()
        if self.status is None:
            self.fatal = self.error
            return
        if plain:
            for line in self.lines(80, 10_000):
                print(line.plain)
        else:
            console = Console()
            console.print(Group(*self.lines(console.width, console.height)))

    def run_plain(self) -> None:
        """Plain text frames, one per interval, for a pipe or a dumb terminal (Ctrl-C ends)."""
        width = shutil.get_terminal_size((80, 24)).columns
        while True:
            self.fetch()
            print("\n".join(line.plain for line in self.lines(width, 10_000)), end="\n\n", flush=True)
            time.sleep(self.interval)

    def run_live(self) -> None:
        """The interactive view on the alternate screen until q."""
        console = Console()
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                      redirect_stderr=False) as live:
                def draw() -> None:
                    live.update(Group(*self.lines(console.width, console.height)), refresh=True)

                next_tick = 0.0
                while True:
                    now = time.monotonic()
                    if now >= next_tick:
                        self.fetch()
                        next_tick = now + self.interval
                        draw()
                    ready, _, _ = select.select([fd], [], [], max(0.0, next_tick - time.monotonic()))
                    if ready:
                        data = os.read(fd, 64).decode(errors="replace")
                        if not data:
                            return  # the terminal went away
                        for key in keys(data):
                            if self.key(key, draw) == "quit":
                                return
                        draw()
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    # -- keys --------------------------------------------------------------------------

    def key(self, key: str, redraw=lambda: None) -> str | None:
        """Act on one key; "quit" ends the session."""
        ui = self.ui
        if ui.typing:
            if key == "enter":
                ui.filter, ui.typing, ui.prompt = self._typed.strip(), False, ""
                ui.selected = 0
            elif key == "esc":
                ui.filter, ui.typing, ui.prompt = "", False, ""
            elif key == "backspace":
                self._typed = self._typed[:-1]
                ui.prompt = f"filter: {self._typed}_"
            elif len(key) == 1 and key.isprintable():
                self._typed += key
                ui.prompt = f"filter: {self._typed}_"
            return None
        if self.pending is not None:
            request, svc, rs = self.pending
            self.pending, ui.prompt = None, ""
            if key in ("y", "Y"):
                ui.message = f"{QUESTIONS[request].lower()} {svc['name']} {_target(rs)}…"
                redraw()
                ui.message = self.act(request, svc, rs)
                self.fetch()
            else:
                ui.message = "cancelled"
            return None
        if key in ("q", "Q"):
            return "quit"
        if key in ("up", "k"):
            ui.selected = max(0, ui.selected - 1)
        elif key in ("down", "j"):
            ui.selected += 1
        elif key in ("d", "e", "r"):
            pair = self.selected()
            if pair is None:
                ui.message = "no real server selected"
                return None
            request = {"d": "drain", "e": "enable", "r": "recheck"}[key]
            svc, rs = pair
            self.pending = (request, svc, rs)
            named = f" ({rs['name']})" if rs.get("name") else ""
            ui.prompt = f"{QUESTIONS[request]} {svc['name']} {_target(rs)}{named}? [y/n]"
        elif key == "/":
            ui.typing, self._typed, ui.prompt = True, "", "filter: _"
        elif key == "f":
            names = self.service_names()
            if names:
                i = names.index(ui.filter) + 1 if ui.filter in names else 0
                ui.filter = names[i] if i < len(names) else ""
                ui.selected = 0
        return None

    def service_names(self) -> list[str]:
        """Every service's name (asked once without the filter when only filtered answers were seen)."""
        from lvsmail.console.client import APIError

        if not self.names and self.client is not None:
            try:
                self.names = [s["name"] for s in self.client.call("status", events=0)["status"]["services"]]
            except (APIError, OSError, ValueError) as exc:
                self.ui.message = f"cannot list the services: {exc}"
        return self.names

    def selected(self) -> tuple[dict, dict] | None:
        """The (service, real server) the cursor is on."""
        if self.status is None:
            return None
        pairs = [(s, r) for s, r in servers(self.status, self.ui) if r["member"] != "fallback"]
        if not pairs:
            return None
        everything = servers(self.status, self.ui)
        s, r = everything[max(0, min(self.ui.selected, len(everything) - 1))]
        return None if r["member"] == "fallback" else (s, r)

    def act(self, request: str, svc: dict, rs: dict) -> str:
        """Send drain/enable/recheck for one server of one service; the outcome as a message line."""
        from lvsmail.console.client import APIError

        try:
            reply = self.client.call(request, target=_target(rs), service=svc["name"])
        except (APIError, OSError, AttributeError) as exc:
            return f"{request} failed: {exc}"
        if request == "recheck":
            r = reply["results"][0]
            return f"re-checked: {'ok' if r['ok'] else 'FAILED'}: {r['reason']}"
        s = reply["servers"][0]
        return (f"{DONE[request]} {svc['name']} {_target(rs)}: {s.get('health')}, "
                f"weight {s.get('configured_weight')}/{s.get('effective_weight')}")


def _target(rs: dict) -> str:
    return f"[{rs['address']}]:{rs['port']}" if ":" in rs["address"] else f"{rs['address']}:{rs['port']}"


_SEQUENCES = {"\x1b[A": "up", "\x1bOA": "up", "\x1b[B": "down", "\x1bOB": "down"}


def keys(data: str) -> list[str]:
    """Split terminal input into keys: arrows, Enter, Esc, Backspace, and single characters."""
    out = []
    i = 0
    while i < len(data):
        seq = data[i:i + 3]
        if seq in _SEQUENCES:
            out.append(_SEQUENCES[seq])
            i += 3
            continue
        ch = data[i]
        if ch == "\x1b":
            # Another escape sequence (other arrows, function keys): skip it whole; a lone Esc is Esc.
            if data[i + 1:i + 2] in ("[", "O"):
                j = i + 2
                while j < len(data) and not data[j].isalpha() and data[j] != "~":
                    j += 1
                i = j + 1
                continue
            out.append("esc")
        elif ch in "\r\n":
            out.append("enter")
        elif ch in "\x7f\x08":
            out.append("backspace")
        else:
            out.append(ch)
        i += 1
    return out
