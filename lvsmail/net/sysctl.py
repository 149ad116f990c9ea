"""Kernel parameters (sysctls) behind a small interface, with a fake.

Everything under ``net.`` is per network namespace: the kernel resolves
``/proc/sys/net/...`` against the namespace of the *thread* that opens the file.
So :class:`ProcSysctl` always acts on the namespace it runs in; to change another
namespace, run the code there (``run_in_netns`` from the netns module, or
``ip netns exec``). The same holds for the per-interface keys
(``net.ipv4.conf.IFACE.*``), which exist only while the interface does.

Keys are written as sysctl(8) writes them: dots separate levels, and a ``/`` in a
key stands for a dot inside one level (an interface called ``eth0.100`` is
``net.ipv4.conf.eth0/100.rp_filter``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class SysctlError(OSError):
    """A key does not exist (e.g. an interface that is not there) or cannot be written."""


def sysctl_path(key: str, root: Path = Path("/proc/sys")) -> Path:
    """File under ``root`` for a dotted sysctl key."""
    parts = key.split(".")
    if not key or any(not p or p in ("..", ".") for p in parts):
        raise ValueError(f"bad sysctl key {key!r}")
    return root.joinpath(*(p.replace("/", ".") for p in parts))


def conf_key(family: str, interface: str, name: str) -> str:
    """``net.ipv4.conf.IFACE.NAME`` (or ipv6), with dots in the interface name escaped."""
    fam = {"inet": "ipv4", "inet6": "ipv6", "ipv4": "ipv4", "ipv6": "ipv6"}[family]
    return f"net.{fam}.conf.{interface.replace('.', '/')}.{name}"


class SysctlBackend(Protocol):
    """Reads and writes sysctls in the current network namespace."""

    def read(self, key: str) -> str:
        """Current value, whitespace-trimmed; SysctlError if the key does not exist."""

    def write(self, key: str, value: str) -> None:
        """Set a value; SysctlError if the key does not exist or the kernel refuses it."""

    def children(self, prefix: str) -> list[str]:
        """Sorted names one level below ``prefix``, escaped as key levels; SysctlError if it is not there."""


class ProcSysctl:
    """Sysctls through /proc/sys, in the network namespace of the calling thread."""

    def __init__(self, root: Path = Path("/proc/sys")) -> None:
        self.root = Path(root)

    def read(self, key: str) -> str:
        """Read through /proc/sys (a write-only key, such as ``net.ipv4.route.flush``, cannot be read)."""
        try:
            return sysctl_path(key, self.root).read_text().strip()
        except FileNotFoundError as exc:
            raise SysctlError(exc.errno, f"no sysctl {key}") from exc
        except OSError as exc:
            raise SysctlError(exc.errno, f"cannot read {key}: {exc.strerror}") from exc

    def write(self, key: str, value: str) -> None:
        """Write through /proc/sys."""
        path = sysctl_path(key, self.root)
        try:
            # The kernel parses the whole write at once; open without create.
            with open(path, "r+") as f:
                f.write(f"{value}\n")
        except FileNotFoundError as exc:
            raise SysctlError(exc.errno, f"no sysctl {key}") from exc
        except OSError as exc:
            raise SysctlError(exc.errno, f"cannot set {key}={value}: {exc.strerror}") from exc

    def children(self, prefix: str) -> list[str]:
        """List the directory (``net.ipv4.conf`` lists every interface); a dot in a name comes back as ``/``."""
        try:
            names = [p.name for p in sysctl_path(prefix, self.root).iterdir()]
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise SysctlError(exc.errno, f"no sysctl directory {prefix}") from exc
        except OSError as exc:
            raise SysctlError(exc.errno, f"cannot list {prefix}: {exc.strerror}") from exc
        return sorted(name.replace(".", "/") for name in names)


class FakeSysctl:
    """In-memory sysctls: only keys it was given exist, as in the kernel."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})
        self.writes: list[tuple[str, str]] = []

    def read(self, key: str) -> str:
        """Value of an existing key."""
        if key not in self.values:
            raise SysctlError(2, f"no sysctl {key}")
        return self.values[key]

    def write(self, key: str, value: str) -> None:
        """Set an existing key and remember the write."""
        if key not in self.values:
            raise SysctlError(2, f"no sysctl {key}")
        self.values[key] = str(value)
        self.writes.append((key, str(value)))

    def children(self, prefix: str) -> list[str]:
        """Next levels of the keys under ``prefix``, as the kernel's directory would list them."""
        start = prefix + "."
        names = {key[len(start):].split(".", 1)[0] for key in self.values if key.startswith(start)}
        if not names:
            raise SysctlError(2, f"no sysctl directory {prefix}")
        return sorted(names)
