"""Typed reads of single settings, recording a located problem instead of raising.

Every read returns None when the value is unusable, after noting why, so the
caller can carry on and report every mistake in the file in one pass.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from lvsmail.config.errors import Problem
from lvsmail.config.tree import Node

#: Keys people reach for to put a secret inline; the cluster file is copied
#: around and world-readable, so secrets live in a root-only file instead.
SECRET_KEYS = frozenset({"password", "passwd", "pass", "secret", "login", "user", "username", "token"})

_SECRET_HINT = ("secrets do not belong in the cluster file (it is copied between directors and kept in "
                "version control); put the login in a root-only file and set `credentials: /path/to/file`")


def join(path: str, key: str | int) -> str:
    """Extend a dotted key path: ``services[1]`` + ``check`` -> ``services[1].check``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def describe(node: Node) -> str:
    """A short quote of what was found, for 'expected X, got Y' messages."""
    if isinstance(node.value, dict):
        return "a mapping"
    if isinstance(node.value, list):
        return "a list"
    if node.value is None:
        return "nothing"
    return repr(node.text if node.text is not None else str(node.value))


class Reader:
    """Collects problems for one source while reading typed values out of a tree."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[Problem] = []

    def error(self, where: Node | int | None, path: str, message: str) -> None:
        """Record one problem at a node's line (or an explicit line)."""
        line = where.line if isinstance(where, Node) else where
        self.problems.append(Problem(self.source, line, path, message))

    # -- structure -----------------------------------------------------------

    def mapping(self, node: Node, path: str, keys: Sequence[str],
                required: Iterable[str] = ()) -> dict[str, Node] | None:
        """The entries of a mapping whose keys are all in ``keys``; unknown keys are errors."""
        if not node.is_mapping:
            self.error(node, path, f"expected a mapping, got {describe(node)}")
            return None
        found: dict[str, Node] = {}
        for key, entry in node.value.items():
            if key in keys:
                found[key] = entry.node
            else:
                self.unknown_key(entry.line, join(path, key), key, keys)
        for key in required:
            if key not in node.value:
                self.error(node, path, f"missing required key '{key}'")
        return found

    def unknown_key(self, line: int | None, path: str, key: str, keys: Sequence[str]) -> None:
        """Report a key that is not allowed here, suggesting the nearest valid one."""
        if key.lower() in SECRET_KEYS:
            self.error(line, path, f"not accepted: {_SECRET_HINT}")
            return
        message = f"unknown key; expected one of {', '.join(keys)}"
        close = difflib.get_close_matches(key, keys, n=1)
        if close:
            message += f" (did you mean '{close[0]}'?)"
        self.error(line, path, message)

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        """The items of a list."""
        if not isinstance(node.value, list):
            self.error(node, path, f"expected a list, got {describe(node)}")
            return None
        return node.value

    # -- scalars -------------------------------------------------------------

    def string(self, node: Node, path: str) -> str | None:
        """A non-empty string, taken as typed (so ``on`` stays ``on``)."""
        if isinstance(node.value, (dict, list)) or node.value is None:
            self.error(node, path, f"expected a string, got {describe(node)}")
            return None
        text = node.text if node.text is not None else str(node.value)
        if not text.strip():
            self.error(node, path, "must not be empty")
            return None
        return text

    def integer(self, node: Node, path: str, low: int | None = None, high: int | None = None) -> int | None:
        """An integer (not a quoted number, not a boolean) within [low, high]."""
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                hint = " (write the number without quotes)"
            self.error(node, path, f"expected an integer, got {describe(node)}{hint}")
            return None
        return value if self._in_range(node, path, value, low, high) else None

    def number(self, node: Node, path: str) -> float | None:
        """A number of seconds greater than zero (integer or decimal)."""
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(node, path, f"expected a number of seconds, got {describe(node)}")
            return None
        if not value > 0 or value == float("inf"):
            self.error(node, path, f"must be greater than 0, got {describe(node)}")
            return None
        return float(value)

    def boolean(self, node: Node, path: str) -> bool | None:
        """A YAML boolean (true/false); strings such as "yes" in quotes are refused."""
        if not isinstance(node.value, bool):
            self.error(node, path, f"expected true or false, got {describe(node)}")
            return None
        return node.value

    def choice(self, node: Node, path: str, choices: Sequence[str], what: str,
               aliases: Mapping[str, str] | None = None) -> str | None:
        """One of ``choices`` (or an alias, normalised to its canonical name)."""
        text = self.string(node, path)
        if text is None:
            return None
        if text in choices:
            return text
        if aliases and text in aliases:
            return aliases[text]
        article = "an" if what[0] in "aeiou" else "a"
        also = f" (or {', '.join(aliases)})" if aliases else ""
        self.error(node, path, f"{text!r} is not {article} {what}; expected one of {', '.join(choices)}{also}")
        return None

    def address(self, node: Node, path: str) -> str | None:
        """An IPv4 or IPv6 address in compressed form; host names are refused."""
        text = self.string(node, path)
        return None if text is None else self.parse_address(node, path, text)

    def parse_address(self, where: Node | int | None, path: str, text: str) -> str | None:
        """Normalise an address already extracted from a larger string."""
        try:
            addr = ipaddress.ip_address(text.strip())
        except ValueError:
            self.error(where, path, f"{text!r} is not an IP address (lvsmail never resolves host names)")
            return None
        if getattr(addr, "scope_id", None):
            self.error(where, path, f"{text!r}: zone indexes (%...) are not supported")
            return None
        if addr.is_unspecified or addr.is_multicast:
            self.error(where, path, f"{text!r} is not a unicast address")
            return None
        return addr.compressed

    def _in_range(self, node: Node, path: str, value: int, low: int | None, high: int | None) -> bool:
        """Check bounds, reporting the allowed range in the operator's terms."""
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                expect = f"at least {low}"
            elif low is None:
                expect = f"at most {high}"
            else:
                expect = f"between {low} and {high}"
            self.error(node, path, f"must be {expect}, got {value}")
            return False
        return True
