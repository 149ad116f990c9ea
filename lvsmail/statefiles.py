"""The director's state files: their names, and the one way to replace one.

A director keeps its state in one directory, every file named after its cluster
file (``mail.yaml`` → ``mail.owned.json``, ``mail.health.json``, ``mail.sock``...),
so several directors can share the directory and ``status`` can read them all.
Naming them here, once, keeps the writer (the daemon) and the readers (status,
the API client, ``config diff``) from drifting apart.

A state file is replaced, never rewritten in place: the data goes to a temporary
file in the same directory (a rename is atomic only within one file system),
which then takes the real name, so a reader sees the old file or the new one,
never half of one. This module imports nothing from lvsmail: everything may
use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

#: Where a director keeps its state files unless told otherwise (--state-dir; systemd's RuntimeDirectory=lvsmail).
DEFAULT_STATE_DIR = "/run/lvsmail"

#: Where a director listens when its state directory cannot hold a socket (a 9p share, a path too long).
FALLBACK_SOCKET_DIR = Path("/run/lvsmail-api")

#: Each kind of state file and the suffix after the cluster file's stem.
SUFFIXES = {
    "owned": ".owned.json",          # the services this director created, for deletions across restarts
    "overrides": ".overrides.json",  # operators' drain and weight
    "members": ".members.json",      # real servers that joined through the registration API
    "outages": ".outages.jsonl",     # measured failovers, for the availability report
    "failover": ".failover.json",    # VRRP instances' roles, for status
    "kernel": ".kernel.json",        # the kernel profile and sync role, for status
    "health": ".health.json",        # real servers' health, for status
    "reload": ".reload.json",        # the last reload and its outcome, for `director reload`
    "socket": ".sock",               # the local API
    "socket_pointer": ".sock.path",  # names the fallback socket when the directory cannot hold one
}


@dataclass(frozen=True)
class StateDir:
    """Where one director (one cluster file) keeps its state files."""

    root: Path
    stem: str

    @classmethod
    def of(cls, root: str | Path, config_path: str | Path) -> StateDir:
        """The state files of the director of ``config_path`` in ``root``."""
        return cls(Path(root), Path(config_path).stem)

    def path(self, kind: str) -> Path:
        """The file of one kind (a key of SUFFIXES); KeyError for an unknown kind."""
        return self.root / (self.stem + SUFFIXES[kind])

    @property
    def owned(self) -> Path:
        """The services the director created (so it deletes only its own)."""
        return self.path("owned")

    @property
    def overrides(self) -> Path:
        """Operators' drain and weight overrides."""
        return self.path("overrides")

    @property
    def members(self) -> Path:
        """Real servers that joined through the registration API."""
        return self.path("members")

    @property
    def outages(self) -> Path:
        """The measured failovers (JSON lines)."""
        return self.path("outages")

    @property
    def failover(self) -> Path:
        """The VRRP instances' published status."""
        return self.path("failover")

    @property
    def kernel(self) -> Path:
        """The published kernel profile and sync role."""
        return self.path("kernel")

    @property
    def health(self) -> Path:
        """The published health of the real servers."""
        return self.path("health")

    @property
    def reload(self) -> Path:
        """The record of the last reload."""
        return self.path("reload")

    @property
    def socket(self) -> Path:
        """The local API socket."""
        return self.path("socket")

    @property
    def socket_pointer(self) -> Path:
        """The file that names the fallback socket."""
        return self.path("socket_pointer")

    def fallback_socket(self, under: Path = FALLBACK_SOCKET_DIR) -> Path:
        """The tmpfs socket used when the state directory cannot hold one, unique per state directory."""
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return Path(under) / f"{digest}-{self.stem}.sock"

    @staticmethod
    def each(root: str | Path, kind: str, stem: str | None = None) -> list[tuple[str, Path]]:
        """Every file of one kind in ``root`` as (stem, path), sorted by path; only ``stem``'s when given."""
        suffix = SUFFIXES[kind]
        if stem is not None:
            path = Path(root) / (stem + suffix)
            return [(stem, path)] if path.exists() else []
        return [(p.name[:-len(suffix)], p) for p in sorted(Path(root).glob("*" + suffix))]


def write_json(path: str | Path, data: object, *, indent: int | None = None, sort_keys: bool = False,
               newline: bool = False, mode: int | None = None, fsync: bool = False) -> None:
    """Replace ``path`` atomically with ``data`` as JSON (``json.dumps``'s layout); raises OSError.

    ``newline`` ends the file with one; ``mode`` and ``fsync`` as for ``write_text``.
    """
    text = json.dumps(data, indent=indent, sort_keys=sort_keys)
    write_text(path, text + "\n" if newline else text, mode=mode, fsync=fsync)


def write_text(path: str | Path, text: str | bytes, *, mode: int | None = None, fsync: bool = False) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8) or bytes; raises OSError, the old file intact.

    The parent directory is created if missing. ``mode`` sets the file's permissions
    whatever the umask (a file holding secrets is never readable, even briefly);
    ``fsync`` flushes the data before the rename, so a crash cannot leave an empty
    file under the real name.
    """
    path = Path(path)
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # O_CREAT's mode passes through the umask, and an old tmp keeps its own
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file a failed write left (it is not the state file; its absence is fine)."""
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
