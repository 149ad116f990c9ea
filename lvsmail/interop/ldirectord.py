"""Importing an ldirectord.cf into an lvsmail cluster.

The file is read the way ldirectord reads it (a ``virtual=`` line opens a block
of lines indented by four spaces or a tab; a blank line closes it; inherited
global settings; ldirectord's own defaults), turned into the same line-annotated
tree as a cluster file, and validated by the cluster loader, so errors point at
ldirectord.cf lines.  Whatever lvsmail cannot express becomes a warning naming
the directive and line: nothing is dropped without a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lvsmail.config.errors import ConfigError, Problem
from lvsmail.config.loader import spec_from_tree
from lvsmail.config.tree import Node, node
from lvsmail.interop.ldirectord_virtual import (
    GLOBAL_ONLY,
    INHERITED,
    UNSUPPORTED,
    VIRTUAL_ONLY,
    Directive,
    Notes,
    Virtual,
    VirtualReader,
    yes_no,
)
from lvsmail.spec import ClusterSpec


@dataclass(frozen=True)
class ImportResult:
    """An imported cluster and what could not be carried over, one message per directive."""

    spec: ClusterSpec
    warnings: list[str]


def import_ldirectord(path_or_text: str | Path, *, name: str | None = None) -> ImportResult:
    """Convert an ldirectord.cf into a validated ClusterSpec.

    ``path_or_text`` is a path, or the file's text (a string holding a newline or '=').

    Raises ConfigError, listing every problem, when the input cannot be converted.
    """
    text, source, stem = _read(path_or_text)
    importer = _Importer(source)
    globals_, virtuals = importer.parse(text)
    tree = importer.cluster(name or _cluster_name(stem), globals_, virtuals)
    if importer.notes.problems:
        # An inherited global is read once per virtual; report each mistake once.
        raise ConfigError(list(dict.fromkeys(importer.notes.problems)))
    return ImportResult(spec_from_tree(tree, source), importer.notes.warnings)


def _read(path_or_text: str | Path) -> tuple[str, str, str]:
    """(text, source label, file stem); multi-line strings are the file's text."""
    if isinstance(path_or_text, str) and ("\n" in path_or_text or "=" in path_or_text):
        return path_or_text, "<string>", "ldirectord"
    if "\0" in str(path_or_text):
        # Not a file name (the kernel cannot open one with a NUL byte; Path raises a bare ValueError).
        raise ConfigError([Problem(repr(str(path_or_text)[:80]), None, "",
                                   "cannot read ldirectord.cf: the file name contains a NUL byte")])
    path = Path(path_or_text)
    try:
        return path.read_text(encoding="utf-8"), str(path_or_text), path.stem
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(str(path_or_text), None, "", f"cannot read ldirectord.cf: {reason}")]) from None


def _cluster_name(stem: str) -> str:
    """A valid cluster name from a file name: ``ldirectord.cf`` -> ``ldirectord``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._")
    return cleaned[:63] or "ldirectord"


class _Importer:
    """Parses ldirectord.cf into directives and builds the cluster tree from them."""

    def __init__(self, source: str):
        self.source = source
        self.notes = Notes(source)

    # -- reading lines ---------------------------------------------------------

    def parse(self, text: str) -> tuple[dict[str, Directive], list[Virtual]]:
        """Split the file into global directives (last one wins) and virtual blocks."""
        globals_: dict[str, Directive] = {}
        virtuals: list[Virtual] = []
        current: Virtual | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            if re.match(r"\s*#", raw):
                continue  # comment lines do not end a block
            line = raw.split("#", 1)[0].replace("\t", "    ").rstrip()
            if not line:
                current = None  # as in ldirectord, a blank line ends the virtual block
                continue
            match = re.fullmatch(r"(\s*)([A-Za-z0-9_]+)\s*(?:=\s*(.*))?", line)
            if not match:
                self.notes.error(number, "", f"cannot read {raw.strip()!r}; expected directive=value")
                continue
            indent, key, value = len(match[1]), match[2], _unquote(match[3] or "")
            directive = Directive(number, key, value)
            if indent >= 4:
                if current is None:
                    self.notes.error(number, key, "indented line outside a virtual block "
                                                  "(a blank or unindented line ends a block)")
                else:
                    current.directives.append(directive)
            elif indent:
                self.notes.error(number, key, "indent virtual-block lines by at least 4 spaces or a tab")
            elif key in ("virtual", "virtual6"):
                current = Virtual(number, "inet6" if key == "virtual6" else "inet", value)
                virtuals.append(current)
            else:
                current = None
                if key in VIRTUAL_ONLY:
                    self.notes.error(number, key, "is only valid inside a virtual block")
                elif key not in GLOBAL_ONLY | INHERITED:
                    self.notes.error(number, key, "is not an ldirectord directive")
                else:
                    globals_[key] = directive
        self._global_warnings(globals_)
        return globals_, virtuals

    def _global_warnings(self, globals_: dict[str, Directive]) -> None:
        """Global directives without an equivalent; yes/no values are still checked."""
        for key in ("quiescent", "autoreload", "fork", "readdquiescent", "cleanstop"):
            if key in globals_:
                yes_no(self.notes, globals_[key])
        for key, d in sorted(globals_.items(), key=lambda kv: kv[1].line):
            if key in UNSUPPORTED and key not in GLOBAL_MAPPED:
                self.notes.cannot(d, UNSUPPORTED[key])

    # -- building the cluster tree ---------------------------------------------

    def cluster(self, name: str, globals_: dict[str, Directive], virtuals: list[Virtual]) -> Node:
        """The whole cluster tree: VIPs in order of appearance and one service per virtual."""
        services, vips = [], {}
        for v in virtuals:
            service = VirtualReader(self.notes, globals_, v).service()
            if service is not None:
                services.append(service)
                if "vip" in service.value:
                    vip = service.value["vip"].node
                    vips.setdefault(vip.value, vip)
        if not vips and virtuals:
            self.notes.warnings.append(f"{self.source}: the file defines only fwmark services; list the "
                                       "addresses your firewall marks under vips so failover moves them")
        top = {"cluster": name, "vips": list(vips.values())}
        if "maintenancedir" in globals_:
            d = globals_["maintenancedir"]
            top["maintenance_dir"] = node(d.value, d.line)
        if "emailalert" in globals_:
            top["alerts"] = _alerts(globals_)
        top["services"] = services
        return node(top, 1)


#: Global directives the cluster file expresses at its top level (maintenance_dir, alerts).
GLOBAL_MAPPED = frozenset({"maintenancedir", "emailalert", "emailalertfreq", "emailalertfrom", "smtp"})


def _alerts(globals_: dict[str, Directive]) -> Node:
    """ldirectord's global mail alerts as an ``alerts:`` block (emailalertfreq → repeat)."""
    first = globals_["emailalert"]
    block: dict = {"email": node([a.strip() for a in first.value.split(",") if a.strip()], first.line)}
    if "emailalertfrom" in globals_:
        d = globals_["emailalertfrom"]
        block["email_from"] = node(d.value, d.line)
    if "smtp" in globals_:
        d = globals_["smtp"]
        block["smtp"] = node(d.value, d.line)
    if "emailalertfreq" in globals_:
        d = globals_["emailalertfreq"]
        block["repeat"] = node(int(d.value) if d.value.isdigit() else d.value, d.line)
    return node(block, first.line)


def _unquote(value: str) -> str:
    """Strip one pair of surrounding double quotes, as ldirectord's patterns do."""
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
