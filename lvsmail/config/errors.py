"""Configuration problems, collected in one pass and reported together.

An administrator fixing a cluster file should see every mistake at once, each
with the file, line and key to edit, rather than one per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration source, located by file, line and key path."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration could not be accepted; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]):
        # Line order reads like the file; problems found by cross-checks
        # (duplicates, references) would otherwise trail at the end.
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0))
        super().__init__("\n".join(str(p) for p in self.problems))
