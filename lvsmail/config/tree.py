"""A configuration document as plain values that remember their source line.

The validator works on this tree rather than on YAML nodes so that importers
(ldirectord.cf) can build the same tree with their own line numbers and get
the same checks and messages, pointing at the file the administrator wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from lvsmail.config.errors import ConfigError, Problem


@dataclass(frozen=True)
class Node:
    """A value and the 1-based line it came from.

    ``value`` is a scalar, a ``list[Node]``, or a ``dict[str, Entry]`` for a
    mapping.  ``text`` is a scalar's source text: string settings use it so that
    YAML 1.1 guesses (``on`` -> True, ``1:30`` -> 90) do not alter what was typed.
    """

    value: Any
    line: int | None
    text: str | None = None

    @property
    def is_mapping(self) -> bool:
        """True when the value is a mapping of key to entry."""
        return isinstance(self.value, dict)


@dataclass(frozen=True)
class Entry:
    """One key of a mapping: the key's own line (for unknown-key errors) and its value."""

    line: int | None
    node: Node


def node(data: Any, line: int | None) -> Node:
    """Wrap plain Python data as a tree; nested Nodes keep their own lines."""
    if isinstance(data, Node):
        return data
    if isinstance(data, dict):
        entries = {}
        for key, value in data.items():
            child = node(value, line)
            entries[str(key)] = Entry(child.line, child)
        return Node(entries, line)
    if isinstance(data, (list, tuple)):
        return Node([node(item, line) for item in data], line)
    return Node(data, line, _text(data))


def _text(value: Any) -> str:
    """How a scalar reads in YAML, for messages and string settings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def from_yaml(text: str, source: str) -> tuple[Node | None, list[Problem]]:
    """Compose YAML ``text`` into a tree (None for an empty document) and its problems.

    Duplicate keys (PyYAML would silently keep the last) and unreadable values
    are returned as problems so validation can go on and report the rest too;
    a syntax error leaves nothing to validate and raises ConfigError.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return None, []
        problems: list[Problem] = []
        return _convert(root, source, "", problems, yaml.constructor.SafeConstructor()), problems
    except RecursionError:
        # PyYAML composes (and _convert walks) nesting by recursion: a file nested deeper than
        # Python's stack is hostile or broken, never a cluster file (which nests a few levels).
        raise ConfigError([Problem(source, None, "", "nested too deeply to be a cluster file")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        detail = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([Problem(source, line, "", f"YAML syntax error: {detail}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, None, "", f"YAML syntax error: {exc}")]) from None


def _convert(ynode: yaml.Node, source: str, path: str, problems: list[Problem],
             constructor: yaml.constructor.SafeConstructor) -> Node:
    """Turn one YAML node (and its children) into a Node, noting problems."""
    line = ynode.start_mark.line + 1
    if isinstance(ynode, yaml.MappingNode):
        entries: dict[str, Entry] = {}
        for key_node, value_node in ynode.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                message = "merge keys (<<) are not supported; repeat the settings"
                problems.append(Problem(source, key_line, path, message))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(source, key_line, path, "mapping keys must be plain names"))
                continue
            key = key_node.value
            child_path = f"{path}.{key}" if path else key
            if key in entries:
                first = entries[key].line
                problems.append(Problem(source, key_line, child_path, f"duplicate key (first given at line {first})"))
                continue
            entries[key] = Entry(key_line, _convert(value_node, source, child_path, problems, constructor))
        return Node(entries, line)
    if isinstance(ynode, yaml.SequenceNode):
        return Node([_convert(item, source, f"{path}[{i}]", problems, constructor)
                     for i, item in enumerate(ynode.value)], line)
    try:
        value = constructor.construct_object(ynode, deep=True)
    except yaml.YAMLError as exc:
        problems.append(Problem(source, line, path, f"cannot read value: {getattr(exc, 'problem', exc)}"))
        value = None
    return Node(value, line, ynode.value)
