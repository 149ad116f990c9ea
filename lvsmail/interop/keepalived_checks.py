"""keepalived checkers as lvsmail's one check per service, and the pieces every part of the import shares.

A real server inherits connect_timeout, retry, delay_loop and the rest from its
virtual server, and a checker from its real server; the check is built from the
resolved values with keepalived's defaults (delay_loop 60 s, connect_timeout
5 s, retry 1).  lvsmail runs one check per service: the first real server's
first checker is used, and any real server whose checker differs is named in a
warning.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from lvsmail.config.errors import Problem
from lvsmail.config.tree import Node, node

#: keepalived's defaults (keepalived.conf(5)): seconds, counts, methods.
DEFAULT_DELAY_LOOP, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PERSISTENCE = 60, 5, 360
#: ``retry`` defaults per checker: additional checks after a failure before the server is taken out.
DEFAULT_RETRY = {"MISC_CHECK": 0, "DNS_CHECK": 3}
#: keepalived checkers and the lvsmail check each becomes.
CHECKERS = {"TCP_CHECK": "connect", "SMTP_CHECK": "smtp", "HTTP_GET": "http", "SSL_GET": "https",
            "MISC_CHECK": "external", "PING_CHECK": "connect", "UDP_CHECK": "connect", "DNS_CHECK": "connect",
            "BFD_CHECK": None, "FILE_CHECK": None}
_REGEX_CHARS = set(".^$*+?{}[]\\|()")

_NOTIFY = "lvsmail runs no scripts on transitions; its alerts: section mails or posts each one"
_NO_EQUIVALENT = "lvsmail has no equivalent"
#: Why each directive without an lvsmail equivalent is left out (virtual server, real server, checker).
UNSUPPORTED = {
    "flag-1": "lvsmail sets no scheduler flags", "flag-2": "lvsmail sets no scheduler flags",
    "flag-3": "lvsmail sets no scheduler flags", "sh-port": "lvsmail sets no scheduler flags",
    "sh-fallback": "lvsmail sets no scheduler flags", "mh-port": "lvsmail sets no scheduler flags",
    "mh-fallback": "lvsmail sets no scheduler flags",
    "ops": "lvsmail services have no one-packet scheduling (ipvsadm -o)",
    "persistence_engine": "lvsmail has no persistence engines (SIP)",
    "ha_suspend": "lvsmail checks whether or not the director holds the VIP",
    "smtp_alert": "lvsmail's alerts: section announces every transition", "snmp_name": "lvsmail has no SNMP",
    "omega": "lvsmail runs no scripts when it stops",
    "hysteresis": "lvsmail has no quorum (the fallback is used when no real server is up)",
    "quorum_up": _NOTIFY, "quorum_down": _NOTIFY, "notify_up": _NOTIFY, "notify_down": _NOTIFY,
    "sorry_server_inhibit": "the fallback server is never checked", "nat_mask": "keepalived ignores it too",
    "warmup": "lvsmail checks every real server as soon as it starts",
    "uthreshold": "lvsmail sets no connection thresholds", "lthreshold": "lvsmail sets no connection thresholds",
    "connect_ip": "lvsmail checks the real server's own address",
    "bindto": "lvsmail checks from the director's default source address",
    "bind_if": "lvsmail checks from the director's default source address",
    "bind_port": "lvsmail checks from an ephemeral port",
    "fwmark": "lvsmail marks only checks sent through the VIP (check.via: vip)",
    "log_all_failures": "lvsmail logs each transition and its reason",
    "http_protocol": "lvsmail sends HTTP/1.1 requests with Connection: close",
    "fast_recovery": "lvsmail re-adds a real server after check.rise successes",
    "enable_sni": "lvsmail's https check sends check.server_name (default: none)",
    "digest": "lvsmail matches a text or regular expression (check.receive), not an MD5 digest of the page",
    "regex_no_match": "lvsmail's check.receive must match; it cannot be inverted",
    "regex_options": _NO_EQUIVALENT, "regex_stack": _NO_EQUIVALENT, "regex_min_offset": _NO_EQUIVALENT,
    "regex_max_offset": _NO_EQUIVALENT,
    "misc_dynamic": "lvsmail does not take weights from a check's exit status",
    "user": "lvsmail runs external checks as the director's user",
}
CHECK_KEYS = frozenset({"connect_port", "connect_timeout", "retry", "nb_get_retry", "delay_before_retry",
                        "delay_loop", "alpha", "helo_name", "url", "host", "misc_path", "misc_timeout",
                        "virtualhost", "type", "name", "payload", "require_reply", "min_reply_length",
                        "max_reply_length", "track_file", "weight", "dynamic"})
URL_KEYS = frozenset({"path", "status_code", "virtualhost", "regex"})
#: Settings a real server (and a checker) inherits from the level above.
INHERITED = ("connect_timeout", "retry", "nb_get_retry", "delay_before_retry", "delay_loop", "alpha",
             "inhibit_on_failure", "virtualhost")


@dataclass


class Item:
    """One keyword with its arguments, and its block of items when it opens one."""

    key: str
    args: list[str]
    line: int  # a position in Lines, not a line of one file
    children: list[Item] | None = None


class Lines:
    """Numbers every line read, across included files, and maps a number back to (file, line)."""

    def __init__(self) -> None:
        self._places: list[tuple[str, int]] = []

    def add(self, source: str, number: int) -> int:
        """The position of line ``number`` of ``source``."""
        self._places.append((source, number))
        return len(self._places)

    def place(self, line: int | None) -> tuple[str, int | None]:
        """(file, line) of a position."""
        if line is None or not 1 <= line <= len(self._places):
            return (self._places[0][0] if self._places else "<string>"), None
        return self._places[line - 1]

    def relocate(self, problem: Problem) -> Problem:
        """A validation problem at a position, as one at its file and line."""
        file, line = self.place(problem.line)
        return Problem(file, line, problem.path, problem.message)


class Notes:
    """Problems and warnings of one import, and the service names handed out so far."""

    def __init__(self, lines: Lines):
        self.lines = lines
        self.problems: list[Problem] = []
        self.notices: list[tuple[int, str]] = []  # (position, text): warnings, sorted by where they point
        self.names: Counter[str] = Counter()

    def where(self, line: int | None) -> str:
        """``file:line`` of a position."""
        file, number = self.lines.place(line)
        return file if number is None else f"{file}:{number}"

    def error(self, line: int | None, key: str, message: str) -> None:
        """The input is broken (keepalived would refuse it too) or cannot be converted."""
        self.problems.append(Problem(*self.lines.place(line), key, message))

    def warn(self, line: int | None, message: str) -> None:
        """Something the administrator should know that is not about one directive."""
        self.notices.append((line or 0, f"{self.where(line)}: {message}"))

    def cannot(self, item: Item, why: str) -> None:
        """Warn that a directive has no lvsmail equivalent and is left out."""
        self.notices.append((item.line, f"{self.where(item.line)}: directive '{item.key}' cannot be expressed: "
                                        f"{why}"))

    def changed(self, item: Item, why: str) -> None:
        """Warn that a directive was carried over with a different meaning."""
        self.notices.append((item.line, f"{self.where(item.line)}: directive '{item.key}' imported with a change: "
                                        f"{why}"))

    @property
    def warnings(self) -> list[str]:
        """Each warning once, in the order of the lines it points at (across included files)."""
        return list(dict.fromkeys(text for _pos, text in sorted(self.notices, key=lambda n: n[0])))

    def unique_name(self, base: str) -> str:
        """``smtp``, then ``smtp-2``, ``smtp-3`` for later services of the same kind."""
        self.names[base] += 1
        return base if self.names[base] == 1 else f"{base}-{self.names[base]}"


@dataclass


class Real:
    """A real server's resolved settings, before it becomes a tree node."""

    item: Item
    address: str
    port: int | None
    forwarding: str
    weight: int | None
    settings: dict[str, Item] = field(default_factory=dict)  # inherited keys, own value over the service's
    checkers: list[Item] = field(default_factory=list)


class CheckReader:
    """Builds the service's check from its real servers' checkers."""

    def __init__(self, notes: Notes, vs: Item):
        self.notes = notes
        self.vs = vs

    def service_check(self, reals: list[Real]) -> Node | None:
        """The first real server's first checker (None when none has one); others that differ are named."""
        chosen: tuple[Node, tuple, Item] | None = None
        for real in reals:
            for extra in real.checkers[1:]:
                self.notes.cannot(extra, "lvsmail runs one check per service; the first checker of the first "
                                         "real server is used")
            if not real.checkers:
                continue
            built = self._checker(real, real.checkers[0])
            if built is None:
                continue
            check, signature = built
            if chosen is None:
                chosen = (check, signature, real.checkers[0])
            elif signature != chosen[1]:
                self.notes.changed(real.checkers[0], f"lvsmail runs one check per service: real server "
                                                     f"{real.address} gets the check of "
                                                     f"{self.notes.where(chosen[2].line)}")
        if chosen is not None:
            for real in reals:
                if not real.checkers:
                    self.notes.changed(real.item, "keepalived keeps a real server without a checker up; "
                                                  "in lvsmail the service's check applies to it too")
        return chosen[0] if chosen else None

    def _checker(self, real: Real, item: Item) -> tuple[Node, tuple] | None:
        """A checker as a check mapping (tree values) and a plain signature to compare checkers."""
        kind = CHECKERS[item.key]
        if kind is None:
            self.notes.cannot(item, f"lvsmail has no {item.key}")
            return None
        if item.key in ("PING_CHECK", "UDP_CHECK", "DNS_CHECK"):
            self.notes.changed(item, f"lvsmail has no {item.key}; imported as a connect (TCP) check on the port")
        own = {c.key: c for c in item.children or []}
        settings = {**real.settings, **{k: v for k, v in own.items() if k in INHERITED}}
        check: dict = {"type": node(kind, item.line)}
        delay = settings.get("delay_loop")
        check["interval"] = node(seconds_arg(self.notes, delay, DEFAULT_DELAY_LOOP), delay.line if delay else item.line)
        timeout_item = own.get("misc_timeout") if kind == "external" else settings.get("connect_timeout")
        default_timeout = check["interval"].value if kind == "external" else DEFAULT_CONNECT_TIMEOUT
        check["timeout"] = node(seconds_arg(self.notes, timeout_item, default_timeout),
                                timeout_item.line if timeout_item else item.line)
        retry = settings.get("retry") or settings.get("nb_get_retry")
        retries = DEFAULT_RETRY.get(item.key, 1)
        if retry is not None:
            text = one_arg(self.notes, retry)
            if not text.isdigit():
                self.notes.error(retry.line, retry.key, f"{text!r} must be a whole number")
            else:
                retries = int(text)
        if retries:
            # keepalived checks ``retry`` more times after a failure before taking the server out.
            check["fall"] = node(retries + 1, retry.line if retry else item.line)
        if "delay_before_retry" in settings and retries:
            self.notes.changed(settings["delay_before_retry"], "lvsmail repeats a failed check at the check "
                                                                 "interval (delay_loop), not sooner")
        if bool_arg(self.notes, settings.get("alpha")):
            check["start"] = node("down", settings["alpha"].line)
        for child in item.children or []:
            if child.key in INHERITED or child.key == "misc_timeout":
                continue
            self._checker_option(check, child, real, kind)
        if kind == "https":
            check["verify"] = node(False, item.line)
            self.notes.changed(item, "keepalived does not verify the real server's certificate; imported as "
                                     "verify: false (set check.ca_file and verify: true to verify it)")
        if kind in ("http", "https"):
            self._url(check, item, settings)
        if kind == "external" and "command" not in check:
            self.notes.error(item.line, item.key, "needs misc_path (the program to run)")
        signature = tuple(sorted((k, v.value) for k, v in check.items()))
        return node(check, item.line), signature

    def _checker_option(self, check: dict, child: Item, real: Real, kind: str) -> None:
        """One checker keyword: connect_port, helo_name, misc_path, or a report of what is left out."""
        key = child.key
        if key == "connect_port":
            port = one_arg(self.notes, child)
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                self.notes.error(child.line, key, f"{port!r} must be a port 1..65535")
            elif int(port) != (real.port or 0) and not (real.port is None and self._vport_is(int(port))):
                check["port"] = node(int(port), child.line)
        elif key == "helo_name" and kind == "smtp":
            check["helo"] = node(one_arg(self.notes, child), child.line)
        elif key == "host" and kind == "smtp" and child.children is not None:
            # keepalived 1.x wrote SMTP_CHECK { host { connect_port ... } }
            for sub in child.children:
                if sub.key == "connect_port":
                    self._checker_option(check, sub, real, kind)
                else:
                    self.notes.cannot(sub, UNSUPPORTED.get(sub.key, _NO_EQUIVALENT))
        elif key == "misc_path" and kind == "external":
            check["command"] = node(" ".join(child.args), child.line)
        elif key == "url" and kind in ("http", "https"):
            pass  # read by _url
        elif key in UNSUPPORTED:
            self.notes.cannot(child, UNSUPPORTED[key])
        elif key in CHECK_KEYS:
            self.notes.cannot(child, f"{_NO_EQUIVALENT} for this checker")
        else:
            self.notes.error(child.line, key, "is not a checker keyword")

    def _vport_is(self, port: int) -> bool:
        """True when every virtual port of the block is ``port`` (so connect_port changes nothing)."""
        args = self.vs.args
        return len(args) == 2 and args[0] not in ("fwmark", "group") and args[1] == str(port)

    def _url(self, check: dict, item: Item, settings: dict[str, Item]) -> None:
        """The first ``url { path; status_code; regex; virtualhost }``; digests cannot be matched."""
        urls = [c for c in item.children or [] if c.key == "url"]
        host = settings.get("virtualhost")
        for extra in urls[1:]:
            self.notes.cannot(extra, "lvsmail fetches one URL per check; the first is used")
        url = {c.key: c for c in (urls[0].children or [])} if urls else {}
        for child in (urls[0].children or []) if urls else []:
            if child.key not in URL_KEYS:
                if child.key in UNSUPPORTED:
                    self.notes.cannot(child, UNSUPPORTED[child.key])
                else:
                    self.notes.error(child.line, child.key, "is not a url keyword")
        if "path" in url:
            path = one_arg(self.notes, url["path"])
            check["path"] = node(path if path.startswith("/") else "/" + path, url["path"].line)
        host = url.get("virtualhost") or host
        if host is not None:
            check["host"] = node(one_arg(self.notes, host), host.line)
        status = url.get("status_code")
        if status is None:
            if urls:
                self.notes.changed(urls[0], "no status_code: keepalived accepts any 2xx, lvsmail expects 200")
        elif len(status.args) == 1 and status.args[0].isdigit():
            if int(status.args[0]) != 200:
                check["status"] = node(int(status.args[0]), status.line)
        else:
            first = re.match(r"\d+", status.args[0] if status.args else "")
            if first is None:
                self.notes.error(status.line, "status_code", f"{' '.join(status.args)!r} is not a status code")
            else:
                if int(first[0]) != 200:
                    check["status"] = node(int(first[0]), status.line)
                self.notes.changed(status, f"lvsmail expects exactly one status; {first[0]} is used")
        regex = url.get("regex")
        if regex is not None:
            text = one_arg(self.notes, regex)
            check["receive"] = node(text, regex.line)
            if _REGEX_CHARS & set(text):
                try:
                    re.compile(text)
                    check["receive_regex"] = node(True, regex.line)
                except re.error as exc:
                    self.notes.changed(regex, f"the PCRE does not compile in Python ({exc}); matched as plain text")


def one_arg(notes: Notes, item: Item) -> str:
    """The single argument of a directive."""
    if len(item.args) != 1:
        notes.error(item.line, item.key, f"expects one value, got {len(item.args)}")
        return item.args[0] if item.args else ""
    return item.args[0]


def bool_arg(notes: Notes, item: Item | None) -> bool:
    """keepalived's <BOOL>: on/off, true/false, yes/no; a bare keyword is on."""
    if item is None:
        return False
    if not item.args:
        return True
    value = item.args[0].lower()
    if value not in ("on", "off", "true", "false", "yes", "no") or len(item.args) > 1:
        notes.error(item.line, item.key, f"{' '.join(item.args)!r} must be on, off, true, false, yes or no")
        return False
    return value in ("on", "true", "yes")


def seconds_arg(notes: Notes, item: Item | None, default: float) -> float | int | None:
    """keepalived's <TIMER>: seconds, fractions allowed; whole numbers stay integers for the dump."""
    if item is None:
        return default
    text = item.args[0] if len(item.args) == 1 else ""
    if not re.fullmatch(r"\d+(\.\d+)?", text) or float(text) == 0:
        notes.error(item.line, item.key, f"{' '.join(item.args)!r} must be a number of seconds greater than 0")
        return None
    value = float(text)
    return int(value) if value.is_integer() else value
