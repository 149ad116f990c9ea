"""Importing keepalived.conf virtual servers into an lvsmail cluster.

The file is read the way keepalived reads it (words separated by blanks, ``"``
and ``'`` quoting, ``#`` and ``!`` comments anywhere, ``{``/``}`` blocks,
``include`` relative to the including file), turned into the same
line-annotated tree as a cluster file and validated by the cluster loader, so
errors point at keepalived.conf lines.  Only the LVS part is imported; whatever
lvsmail cannot express (VRRP, notify scripts, checker options) becomes a
warning naming the directive and its line: nothing is dropped without a word.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from lvsmail.config.errors import ConfigError, Problem
from lvsmail.config.loader import spec_from_tree
from lvsmail.config.tree import node
from lvsmail.interop.keepalived_checks import Item, Lines, Notes
from lvsmail.interop.keepalived_virtual import VirtualServerReader
from lvsmail.interop.ldirectord import ImportResult, _cluster_name

__all__ = ["ImportResult", "import_keepalived"]

#: Words that include other files (keepalived's variants differ only in how they report errors).
INCLUDE_WORDS = ("include", "includer", "includem", "includew", "includeb", "includea")
#: How deep includes may nest (keepalived's own limit is similar; a loop is reported before this).
MAX_INCLUDE_DEPTH = 8

_VRRP = ("lvsmail's failover: section (VRRPv3, RFC 5798) replaces keepalived's VRRP; "
         "write it by hand (lvsmail does not import VRRP settings)")
#: Top-level blocks outside the LVS configuration, and why each is left out.
TOP_UNSUPPORTED = {
    "vrrp_instance": _VRRP, "vrrp_sync_group": _VRRP, "vrrp_script": _VRRP, "vrrp_track_process": _VRRP,
    "garp_group": _VRRP, "track_file": _VRRP, "vrrp_track_file": _VRRP, "track_process": _VRRP,
    "linkbeat_interfaces": _VRRP, "track_group": _VRRP, "bfd_instance": "lvsmail has no BFD",
    "static_ipaddress": "lvsmail does not configure static addresses (that is the system's network setup)",
    "static_routes": "lvsmail does not configure static routes", "static_rules": "lvsmail does not configure rules",
    "SSL": "lvsmail's https checks take check.ca_file; client certificates are not supported",
    "net_namespace": "run lvsmail inside the namespace instead",
}
#: global_defs keywords without an equivalent, and the word to the administrator.
GLOBAL_REASONS = {
    "notification_email": "mail alerts go under alerts.email in the cluster file",
    "notification_email_from": "mail alerts go under alerts.email_from in the cluster file",
    "smtp_server": "mail alerts go under alerts.smtp in the cluster file",
    "lvs_sync_daemon": "the connection-sync daemon is the cluster file's sync: section (interface, syncid)",
    "router_id": "lvsmail names a director by its host name in logs",
}


def import_keepalived(path_or_text: str | Path, *, name: str | None = None) -> ImportResult:
    """Convert the virtual servers of a keepalived.conf into a validated ClusterSpec.

    ``path_or_text`` is a path, or the file's text (a string holding a newline or '{').

    Raises ConfigError, listing every problem with its file and line, when the input cannot be converted.
    """
    if isinstance(path_or_text, str) and ("\n" in path_or_text or "{" in path_or_text):
        source, stem, base = "<string>", "keepalived", Path.cwd()
        text = path_or_text
    elif "\0" in str(path_or_text):
        # Not a file name (the kernel cannot open one with a NUL byte; Path raises a bare ValueError).
        raise ConfigError([Problem(repr(str(path_or_text)[:80]), None, "",
                                   "cannot read keepalived.conf: the file name contains a NUL byte")])
    else:
        path = Path(path_or_text)
        source, stem, base = str(path_or_text), path.stem, path.parent
        text = _read(path, source, None)
    lines = Lines()
    notes = Notes(lines)
    try:
        items = _Parser(lines, notes).parse(text, source, base)
        tree = _Importer(notes).cluster(name or _cluster_name(stem), items)
    except RecursionError:
        # Blocks are parsed by recursion; a real keepalived.conf nests a few levels.
        raise ConfigError([Problem(source, None, "", "blocks nested too deeply to be a keepalived.conf")]) from None
    if notes.problems:
        raise ConfigError(list(dict.fromkeys(notes.problems)))
    try:
        spec = spec_from_tree(tree, source)
    except ConfigError as exc:
        # Tree lines are positions in all the files read; put each problem back in its own file.
        raise ConfigError([lines.relocate(p) for p in exc.problems]) from None
    return ImportResult(spec, notes.warnings)


def _read(path: Path, source: str, where: Problem | None) -> str:
    """A file's text, or ConfigError saying why it cannot be read (and which include asked for it)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if where is not None:
            raise ConfigError([Problem(where.file, where.line, "include", f"cannot read {path}: {reason}")]) from None
        raise ConfigError([Problem(source, None, "", f"cannot read keepalived.conf: {reason}")]) from None


class _Parser:
    """Words and blocks of one keepalived.conf and the files it includes."""

    def __init__(self, lines: Lines, notes: Notes):
        self.lines = lines
        self.notes = notes
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, line id); kind: word, open, close, eol
        self.reading: list[str] = []  # resolved paths being read, to refuse include loops

    def parse(self, text: str, source: str, base: Path) -> list[Item]:
        """Every top-level item, with nested blocks as children."""
        self._tokenize(text, source, base)
        items, _pos = self._block(0, None)
        return items

    # -- words -----------------------------------------------------------------------

    def _tokenize(self, text: str, source: str, base: Path) -> None:
        if len(self.reading) > MAX_INCLUDE_DEPTH:
            raise ConfigError([Problem(source, None, "include", f"includes nest deeper than {MAX_INCLUDE_DEPTH}")])
        self.reading.append(source)
        for number, raw in enumerate(text.splitlines(), 1):
            line = self.lines.add(source, number)
            try:
                words = split_words(raw)
            except ValueError as exc:
                self.notes.error(line, "", str(exc))
                continue
            if not words:
                continue
            first, quoted = words[0]
            if not quoted and first in INCLUDE_WORDS:
                self._include(line, first, [w for w, _q in words[1:]], base)
                continue
            if not quoted and (first.startswith(("$", "@", "~")) or any("$" in w and not q for w, q in words)):
                self.notes.error(line, first, "parameter substitution, conditional configuration and sequence "
                                              "blocks are not supported; expand them first "
                                              "(keepalived --config-test shows the expanded file)")
                continue
            for word, quoted in words:
                kind = "open" if word == "{" and not quoted else "close" if word == "}" and not quoted else "word"
                self.tokens.append((kind, word, line))
            self.tokens.append(("eol", "", line))
        self.reading.pop()

    def _include(self, line: int, word: str, args: list[str], base: Path) -> None:
        """Read the files an include names, relative to the including file's directory."""
        if len(args) != 1:
            self.notes.error(line, word, "expects one file name or pattern")
            return
        pattern = args[0]
        if "{" in pattern:
            self.notes.error(line, word, f"{pattern!r}: brace expressions are not supported; list the files")
            return
        if "\0" in pattern:  # glob would match nothing and only warn; no file name holds a NUL byte
            self.notes.error(line, word, f"{pattern!r}: a file name cannot contain a NUL byte")
            return
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            self.notes.warn(line, f"'{word} {pattern}' matches no file; nothing imported from it")
            return
        for match in matches:
            resolved = str(Path(match).resolve())
            if resolved in (str(Path(r).resolve()) for r in self.reading if r != "<string>"):
                self.notes.error(line, word, f"{match} includes itself (directly or through other files)")
                continue
            where = Problem(*self.lines.place(line), "", "")
            self._tokenize(_read(Path(match), match, where), match, Path(match).parent)

    # -- blocks ----------------------------------------------------------------------

    def _block(self, pos: int, opener: Item | None) -> tuple[list[Item], int]:
        """Items up to the matching '}' (or the end of input at the top level)."""
        items: list[Item] = []
        current: Item | None = None  # the item the current line's words belong to
        last: Item | None = None  # the previous line's item, which a '{' alone on a line opens
        while pos < len(self.tokens):
            kind, text, line = self.tokens[pos]
            pos += 1
            if kind == "eol":
                last, current = current or last, None
            elif kind == "open":
                target = current or (last if last is not None and last.children is None else None)
                if target is None or target.children is not None:
                    self.notes.error(line, "{", "'{' does not follow a keyword")
                    target = Item("{", [], line)
                target.children, pos = self._block(pos, target)
                current, last = None, None
            elif kind == "close":
                if opener is None:
                    self.notes.error(line, "}", "'}' without a matching '{'")
                    continue
                return items, pos
            elif current is None:
                current = Item(text, [], line)
                items.append(current)
                last = None
            else:
                current.args.append(text)
        if opener is not None:
            self.notes.error(opener.line, opener.key, "'{' is never closed")
        return items, pos


def split_words(raw: str) -> list[tuple[str, bool]]:
    """One line's words as (text, quoted); braces are words of their own unless quoted.

    Quotes (" or ') join text including blanks into one word and are removed;
    a backslash inside quotes escapes the next character; '#' or '!' outside
    quotes starts a comment.
    """
    words: list[tuple[str, bool]] = []
    buf: list[str] = []
    started = quoted = False
    quote: str | None = None
    i = 0
    while i < len(raw):
        ch = raw[i]
        i += 1
        if quote is not None:
            if ch == "\\" and i < len(raw):
                buf.append(_ESCAPES.get(raw[i], raw[i]))
                i += 1
            elif ch == quote:
                quote = None
            else:
                buf.append(ch)
            continue
        if ch in "#!":
            break
        if ch.isspace() or ch in "{}":
            if started:
                words.append(("".join(buf), quoted))
            buf, started, quoted = [], False, False
            if ch in "{}":
                words.append((ch, False))
            continue
        if ch in "\"'":
            quote, started, quoted = ch, True, True
            continue
        buf.append(ch)
        started = True
    if quote is not None:
        raise ValueError(f"unterminated {quote} quote")
    if started:
        words.append(("".join(buf), quoted))
    return words


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


class _Importer:
    """The cluster tree from the top-level items: virtual servers, their groups and LVS timeouts."""

    def __init__(self, notes: Notes):
        self.notes = notes

    def cluster(self, name: str, items: list[Item]):
        """Services in order of appearance; VIPs from their addresses."""
        groups: dict[str, Item] = {}
        for item in items:
            if item.key == "virtual_server_group":
                if len(item.args) != 1 or item.children is None:
                    self.notes.error(item.line, item.key, "expected: virtual_server_group NAME { ... }")
                elif item.args[0] in groups:
                    self.notes.error(item.line, item.key, f"group {item.args[0]!r} is defined twice "
                                                          f"(first at {self.notes.where(groups[item.args[0]].line)})")
                else:
                    groups[item.args[0]] = item
        top: dict = {"cluster": name}
        services, vips, timeouts = [], {}, None
        for item in items:
            if item.key == "virtual_server":
                for service in VirtualServerReader(self.notes, groups, item).services():
                    services.append(service)
                    if "vip" in service.value:
                        vip = service.value["vip"].node
                        vips.setdefault(vip.value, vip)
            elif item.key == "virtual_server_group":
                continue
            elif item.key == "global_defs":
                timeouts = self._global_defs(item)
            elif item.key in TOP_UNSUPPORTED:
                self.notes.cannot(item, TOP_UNSUPPORTED[item.key])
            else:
                self.notes.error(item.line, item.key, "is not a keepalived configuration block "
                                                      "(expected global_defs, virtual_server, ...)")
        if not services and not self.notes.problems:
            self.notes.error(items[0].line if items else None, "virtual_server",
                             "the file has no virtual_server block: nothing to import")
        top["vips"] = list(vips.values())
        if timeouts is not None:
            top["timeouts"] = timeouts
        top["services"] = services
        return node(top, 1)

    def _global_defs(self, block: Item):
        """``lvs_timeouts`` becomes the cluster's timeouts; every other global is reported."""
        timeouts = None
        for item in block.children or []:
            if item.key == "lvs_timeouts":
                timeouts = self._timeouts(item)
            else:
                self.notes.cannot(item, GLOBAL_REASONS.get(item.key, "a keepalived global setting with no "
                                                                     "lvsmail equivalent"))
        return timeouts

    def _timeouts(self, item: Item):
        """``lvs_timeouts [tcp N] [tcpfin N] [udp N]`` (ipvsadm --set)."""
        args, values = item.args, {}
        if len(args) % 2:
            self.notes.error(item.line, item.key, "expected pairs: tcp N tcpfin N udp N")
            return None
        for key, value in zip(args[::2], args[1::2]):
            if key not in ("tcp", "tcpfin", "udp") or not re.fullmatch(r"\d+", value):
                self.notes.error(item.line, item.key, f"'{key} {value}': expected tcp, tcpfin or udp and seconds")
                continue
            values[key] = node(int(value), item.line)
        return node(values, item.line) if values else None
