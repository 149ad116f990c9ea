"""Reversible changes a join makes, the backends they act through, and apply with rollback.

Every change, whatever it touches (a sysctl, a file, a Postfix parameter, the
directors' member list), has the same four operations: describe it, tell whether it
is pending, apply it and return the change that undoes it (None when nothing had to
change), and turn into plain data for the state file. So one loop applies a join,
rolls it back when a step fails half-way, and one loop undoes it on ``leave``; the
state file holds only undo changes, each with the value it found before.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from lvsmail.net.realserver import NetContext, Step, step_from_dict


class JoinError(Exception):
    """A join or leave could not be done; the message says what to fix."""


class ChangeError(JoinError):
    """A change failed; the changes before it were rolled back (``rollback_errors``: those that could not be)."""

    def __init__(self, change: Change, cause: BaseException, rollback_errors: list[str]):
        super().__init__(f"{change.describe()}: {cause}")
        self.change, self.cause, self.rollback_errors = change, cause, rollback_errors


# -- backends ---------------------------------------------------------------------

class PostconfBackend(Protocol):
    """Postfix's main.cf through postconf(1), for one configuration directory at a time."""

    def explicit(self, config_dir: str, name: str) -> str | None:
        """The value set in main.cf, or None when the parameter is not set there (Postfix's default applies)."""

    def effective(self, config_dir: str, name: str) -> str:
        """The value in force, default included (``postconf -h``)."""

    def set(self, config_dir: str, name: str, value: str) -> None:
        """``postconf -e name=value``."""

    def unset(self, config_dir: str, name: str) -> None:
        """``postconf -X name``: back to Postfix's default."""


class Postconf:
    """The real postconf(1)."""

    def __init__(self, exe: str = "postconf") -> None:
        self.exe = exe
        # Answers are kept, and a write updates them: a postconf run right after `postconf -e`
        # takes about two seconds, and a bare `postconf -n` (all parameters) too.
        self._explicit: dict[str, dict[str, str | None]] = {}

    def _run(self, config_dir: str, *args: str) -> str:
        try:
            done = subprocess.run([self.exe, "-c", config_dir, *args], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=60)
        except FileNotFoundError:
            raise JoinError(f"{self.exe} not found: is Postfix installed?") from None
        # postconf warns (and still works) when master.cf is missing; only a failure status counts.
        if done.returncode != 0:
            raise JoinError(f"postconf -c {config_dir} {' '.join(args)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def explicit(self, config_dir: str, name: str) -> str | None:
        """``postconf -n NAME`` prints ``NAME = value`` only when main.cf sets it."""
        cache = self._explicit.setdefault(config_dir, {})
        if name not in cache:
            cache[name] = None
            for line in self._run(config_dir, "-n", name).splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() == name:
                    cache[name] = value.strip()
        return cache[name]

    def effective(self, config_dir: str, name: str) -> str:
        """``postconf -h NAME``."""
        return self._run(config_dir, "-h", name).strip()

    def set(self, config_dir: str, name: str, value: str) -> None:
        """``postconf -e NAME=VALUE``."""
        self._explicit.get(config_dir, {}).pop(name, None)
        self._run(config_dir, "-e", f"{name}={value}")
        self._explicit.setdefault(config_dir, {})[name] = value.strip()

    def unset(self, config_dir: str, name: str) -> None:
        """``postconf -X NAME``."""
        self._explicit.get(config_dir, {}).pop(name, None)
        self._run(config_dir, "-X", name)
        self._explicit.setdefault(config_dir, {})[name] = None


class FakePostconf:
    """main.cf parameters in memory, per directory; ``defaults`` stand for Postfix's built-in values."""

    def __init__(self, files: dict[str, dict[str, str]] | None = None,
                 defaults: dict[str, str] | None = None) -> None:
        self.files = files if files is not None else {}
        self.defaults = defaults or {"inet_interfaces": "all", "queue_directory": "/var/spool/postfix"}
        self.calls: list[tuple] = []

    def _main(self, config_dir: str) -> dict[str, str]:
        if config_dir not in self.files:
            raise JoinError(f"postconf -c {config_dir}: no main.cf")
        return self.files[config_dir]

    def explicit(self, config_dir: str, name: str) -> str | None:
        """Set value or None."""
        return self._main(config_dir).get(name)

    def effective(self, config_dir: str, name: str) -> str:
        """Set value or default."""
        return self._main(config_dir).get(name, self.defaults.get(name, ""))

    def set(self, config_dir: str, name: str, value: str) -> None:
        """Set."""
        self._main(config_dir)[name] = value
        self.calls.append(("set", config_dir, name, value))

    def unset(self, config_dir: str, name: str) -> None:
        """Remove."""
        self._main(config_dir).pop(name, None)
        self.calls.append(("unset", config_dir, name))


class Registrar(Protocol):
    """The directors' member list (the registration API's client)."""

    def register(self, address: str, services: tuple[str, ...], weight: int) -> None:
        """Offer the member to every director."""

    def registered(self, address: str, services: tuple[str, ...], weight: int) -> bool:
        """Whether every director has the member with these services and weight, not drained (optional)."""

    def drain_and_deregister(self, address: str) -> str:
        """Weight 0, wait for connections to end (or time out), then remove; returns what happened."""


@dataclass
class JoinContext:
    """Everything changes act through (all in one network namespace and one file-system root)."""

    net: NetContext
    postconf: PostconfBackend
    registrar: Registrar | None = None
    #: Extra check a Dovecot drop-in must pass once written (the real one asks doveconf what is in force).
    dovecot_effective: Callable[[str, str], str] | None = None
    #: Reloads a daemon whose configuration changed and says what it did (None: never reload).
    reload: Callable[[str], str] | None = None
    log: list[str] = field(default_factory=list)


# -- changes ----------------------------------------------------------------------

class Change:
    """One reversible change: ``apply`` returns its undo change, or None when nothing had to change."""

    op: ClassVar[str] = ""
    #: The daemon that must reload when this change is made (postfix, dovecot, courier) or None.
    service: ClassVar[str | None] = None

    def describe(self) -> str:
        """The change in an administrator's words (the equivalent command where there is one)."""
        raise NotImplementedError

    def pending(self, ctx: JoinContext) -> bool:
        """Whether ``apply`` would change anything now (read-only)."""
        raise NotImplementedError

    def apply(self, ctx: JoinContext) -> Change | None:
        """Make the change; return the change that restores what was there."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Plain data for the state file."""
        return {"op": self.op, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class NetChange(Change):
    """A network step (sysctl, link, address, route) from the real-server network plan."""

    op: ClassVar[str] = "net"
    step: Step

    def describe(self) -> str:
        """The ip/sysctl command."""
        return self.step.describe()

    def pending(self, ctx: JoinContext) -> bool:
        """As the step says."""
        return self.step.pending(ctx.net)

    def apply(self, ctx: JoinContext) -> Change | None:
        """Apply the step; its inverse is a network step too."""
        inverse = self.step.apply(ctx.net)
        return NetChange(inverse) if inverse is not None else None

    def to_dict(self) -> dict:
        """The step nested in plain form."""
        return {"op": self.op, "step": self.step.to_dict()}


@dataclass(frozen=True)
class WriteFile(Change):
    """Make a file hold ``content`` (None: make sure it does not exist), remembering what it held."""

    op: ClassVar[str] = "file"
    path: str
    content: str | None
    mode: int = 0o644
    what: str = "file"  # shown in plans: "sysctl drop-in", "Postfix main.cf" ...
    reload: str | None = None  # the daemon that reads this file
    make_parent: bool = False  # create the directory when missing (a unit's .d directory), else refuse
    remove_parent: bool = False  # an undo that also removes the directory the file needed (if empty)

    def describe(self) -> str:
        """``write PATH`` or ``remove PATH``."""
        if self.content is None:
            return f"remove {self.what} {self.path}"
        return f"write {self.what} {self.path}"

    def _current(self) -> tuple[str | None, int]:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None, 0
        if not os.path.isfile(self.path) or os.path.islink(self.path):
            raise JoinError(f"{self.path} exists and is not a regular file; lvsmail will not replace it")
        return Path(self.path).read_text(encoding="utf-8"), st.st_mode & 0o7777

    def pending(self, ctx: JoinContext) -> bool:
        """Pending when content (or, for a file to keep, its mode) differs."""
        content, mode = self._current()
        if self.content is None:
            return content is not None
        return content != self.content or mode != self.mode

    def apply(self, ctx: JoinContext) -> Change | None:
        """Write atomically (temporary file + rename) so a reader never sees half a file."""
        old, old_mode = self._current()
        parent = os.path.dirname(self.path)
        made = False
        if self.content is None:
            if old is None:
                return None
            os.unlink(self.path)
            if self.remove_parent:
                try:
                    os.rmdir(parent)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # not empty: others' files are there too
                        raise
        else:
            if old == self.content and old_mode == self.mode:
                return None
            if not os.path.isdir(parent):
                if not self.make_parent:
                    raise JoinError(f"directory {parent} does not exist (for {self.what} {self.path})")
                os.makedirs(parent, mode=0o755)
                made = True
            tmp = f"{self.path}.lvsmail-tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, self.mode)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(self.content)
                os.chmod(tmp, self.mode)
                os.replace(tmp, self.path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                if made:
                    os.rmdir(parent)
                raise
        return WriteFile(self.path, old, old_mode or 0o644, self.what, self.reload, remove_parent=made)


@dataclass(frozen=True)
class Symlink(Change):
    """Make ``path`` a symbolic link to ``target`` (None: no link there), as ``systemctl enable`` does."""

    op: ClassVar[str] = "symlink"
    path: str
    target: str | None
    what: str = "link"
    remove_parent: bool = False  # an undo that also removes the directory the link needed (if empty)

    def describe(self) -> str:
        """``ln -s`` or ``rm``."""
        if self.target is None:
            return f"remove {self.what} {self.path}"
        return f"ln -s {self.target} {self.path} ({self.what})"

    def _current(self) -> str | None:
        if os.path.islink(self.path):
            return os.readlink(self.path)
        if os.path.lexists(self.path):
            raise JoinError(f"{self.path} exists and is not a symbolic link; lvsmail will not replace it")
        return None

    def pending(self, ctx: JoinContext) -> bool:
        """Pending when the link differs."""
        return self._current() != self.target

    def apply(self, ctx: JoinContext) -> Change | None:
        """Create, repoint or remove the link."""
        old = self._current()
        if old == self.target:
            return None
        if old is not None:
            os.unlink(self.path)
        parent = os.path.dirname(self.path)
        made = False
        if self.target is not None:
            made = not os.path.isdir(parent)
            os.makedirs(parent, exist_ok=True)
            os.symlink(self.target, self.path)
        elif self.remove_parent:
            try:
                os.rmdir(parent)
            except OSError:  # not empty: other units are enabled there
                pass
        return Symlink(self.path, old, self.what, remove_parent=made)


@dataclass(frozen=True)
class PostconfSet(Change):
    """One main.cf parameter (None: not set, Postfix's default), remembering the explicit value it replaces."""

    op: ClassVar[str] = "postconf"
    service: ClassVar[str | None] = "postfix"
    config_dir: str
    name: str
    value: str | None

    def describe(self) -> str:
        """The postconf command."""
        if self.value is None:
            return f"postconf -c {self.config_dir} -X {self.name}"
        return f"postconf -c {self.config_dir} -e '{self.name} = {self.value}'"

    def pending(self, ctx: JoinContext) -> bool:
        """Pending when main.cf says something else."""
        return ctx.postconf.explicit(self.config_dir, self.name) != self.value

    def apply(self, ctx: JoinContext) -> Change | None:
        """Set or remove; the undo puts back the explicit value, or removes the parameter if it was unset."""
        old = ctx.postconf.explicit(self.config_dir, self.name)
        if old == self.value:
            return None
        if self.value is None:
            ctx.postconf.unset(self.config_dir, self.name)
        else:
            ctx.postconf.set(self.config_dir, self.name, self.value)
        return PostconfSet(self.config_dir, self.name, old)


@dataclass(frozen=True)
class DovecotDropIn(Change):
    """Dovecot's drop-in file; once written, Dovecot must report the settings in force, else it is removed."""

    op: ClassVar[str] = "dovecot"
    service: ClassVar[str | None] = "dovecot"
    path: str
    content: str | None
    main_config: str
    expect: tuple[tuple[str, str], ...] = ()  # (setting, value) doveconf must report after the write

    def describe(self) -> str:
        """write/remove."""
        return f"{'remove' if self.content is None else 'write'} Dovecot settings {self.path}"

    def _file(self) -> WriteFile:
        return WriteFile(self.path, self.content, 0o644, "Dovecot settings")

    def pending(self, ctx: JoinContext) -> bool:
        """As the file."""
        return self._file().pending(ctx)

    def apply(self, ctx: JoinContext) -> Change | None:
        """Write, then ask Dovecot whether the settings are in force (the main file may not include ours)."""
        undo = self._file().apply(ctx)
        if undo is None:
            return None
        if ctx.dovecot_effective is not None and self.content is not None:
            try:
                for setting, value in self.expect:
                    got = ctx.dovecot_effective(self.main_config, setting)
                    if got != value:
                        raise JoinError(
                            f"Dovecot ({self.main_config}) reports {setting} = {got!r}, not {value!r}: the main "
                            f"configuration does not include {self.path} (add `!include_try {self.path}` "
                            "at its end) or sets it again after the include")
            except BaseException:
                undo.apply(ctx)
                raise
        assert isinstance(undo, WriteFile)
        return DovecotDropIn(self.path, undo.content, self.main_config)


@dataclass(frozen=True)
class StorageMarker(Change):
    """The marker file on the shared storage that tells later joins they see the same file system.

    It is cluster data, not this server's: the next real server to join relies on it, so it is
    never removed by ``leave`` (the undo is None).
    """

    op: ClassVar[str] = "marker"
    path: str
    content: str

    def describe(self) -> str:
        """write."""
        return f"write storage marker {self.path}"

    def pending(self, ctx: JoinContext) -> bool:
        """Pending while absent."""
        return not os.path.exists(self.path)

    def apply(self, ctx: JoinContext) -> Change | None:
        """Create it exclusively (another real server joining at the same moment may win: fine)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.content)
            f.flush()
            os.fsync(f.fileno())  # on NFS, make it visible to the next join now
        return None


@dataclass(frozen=True)
class Register(Change):
    """This real server in the directors' member list (through the registration API)."""

    op: ClassVar[str] = "register"
    address: str
    services: tuple[str, ...]
    weight: int = 1

    def describe(self) -> str:
        """What is offered."""
        return f"register {self.address} with the directors for {', '.join(self.services)}"

    def pending(self, ctx: JoinContext) -> bool:
        """Pending unless every director already has this member as offered (asked when the client can)."""
        registered = getattr(ctx.registrar, "registered", None)
        if registered is None:
            return True
        try:
            return not registered(self.address, self.services, self.weight)
        except JoinError:  # a director that cannot be asked: registering is what would fix it
            return True

    def apply(self, ctx: JoinContext) -> Change | None:
        """Register; the undo drains and deregisters."""
        if ctx.registrar is None:
            raise JoinError("no registration client configured")
        ctx.registrar.register(self.address, self.services, self.weight)
        return Deregister(self.address)


@dataclass(frozen=True)
class Deregister(Change):
    """Drain (weight 0, wait for connections to end) and remove this real server from the directors."""

    op: ClassVar[str] = "deregister"
    address: str

    def describe(self) -> str:
        """What leave does first."""
        return f"drain {self.address} and deregister it from the directors"

    def pending(self, ctx: JoinContext) -> bool:
        """Always: the directors are the authority."""
        return True

    def apply(self, ctx: JoinContext) -> Change | None:
        """Drain, then deregister; nothing to undo afterwards (a new join registers again)."""
        if ctx.registrar is None:
            raise JoinError("no registration client configured")
        ctx.log.append(ctx.registrar.drain_and_deregister(self.address))
        return None

    def to_dict(self) -> dict:
        """Plain form."""
        return {"op": self.op, "address": self.address}


CHANGE_TYPES: dict[str, type[Change]] = {
    cls.op: cls for cls in (NetChange, WriteFile, Symlink, PostconfSet, DovecotDropIn, StorageMarker, Register,
                            Deregister)
}


def change_from_dict(data: dict) -> Change:
    """Inverse of ``Change.to_dict``; ValueError for something this version does not know."""
    data = dict(data)
    op = data.pop("op", None)
    if op not in CHANGE_TYPES:
        raise ValueError(f"unknown change {op!r} in the state file")
    if op == "net":
        return NetChange(step_from_dict(data["step"]))
    if op in ("dovecot",) and "expect" in data:
        data["expect"] = tuple(tuple(x) for x in data["expect"])
    if op == "register":
        data["services"] = tuple(data["services"])
    return CHANGE_TYPES[op](**data)


def service_of(change: Change) -> str | None:
    """The daemon that must reload after ``change``."""
    return getattr(change, "reload", None) or type(change).service


# -- apply / undo ---------------------------------------------------------------------

def apply_changes(changes: list[Change], ctx: JoinContext,
                  on_applied: Callable[[Change, Change | None], None] | None = None) -> list[Change]:
    """Apply in order; return the undo changes (newest first). On failure undo what was done and raise ChangeError.

    ``on_applied(change, undo)`` runs after each change, so the caller can record the undo
    list in the state file as it grows (a crash half-way still leaves a usable record).
    """
    undo: list[Change] = []
    for change in changes:
        try:
            inverse = change.apply(ctx)
        except Exception as exc:
            raise ChangeError(change, exc, undo_changes(undo, ctx)) from exc
        if inverse is not None:
            undo.insert(0, inverse)
        if on_applied is not None:
            on_applied(change, inverse)
    return undo


def undo_changes(undo: list[Change], ctx: JoinContext) -> list[str]:
    """Apply undo changes in order, carrying on past failures; return the failures."""
    errors = []
    for change in undo:
        try:
            change.apply(ctx)
        except Exception as exc:
            errors.append(f"{change.describe()}: {exc}")
    return errors


__all__ = [
    "Change", "ChangeError", "DovecotDropIn", "Deregister", "FakePostconf", "JoinContext", "JoinError", "NetChange",
    "Postconf", "PostconfSet", "Register", "StorageMarker", "Symlink", "WriteFile", "apply_changes",
    "change_from_dict", "service_of", "undo_changes",
]
