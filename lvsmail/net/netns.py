"""Network namespaces: create, remove, and run Python code inside one.

Linux keeps the network namespace per *thread*, so code runs in a namespace by
entering it (``setns(2)``) in a fresh thread that ends afterwards: the calling
thread never changes namespace, and nothing has to be restored. Sockets,
netlink handles and ``/proc/sys/net`` files opened in that thread belong to the
namespace for their whole life, so a socket made in a namespace may be used from
any thread afterwards.

Namespaces are named as ``ip netns`` names them (a bind mount under /run/netns),
so ``ip netns exec NAME`` works on them too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Where ``ip netns`` keeps its named namespaces.
NETNS_DIR = Path("/run/netns")

CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = None


def _c() -> ctypes.CDLL:
    """The C library, loaded once, with errno kept."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str, name: str) -> None:
    """Raise OSError with errno when a libc call failed."""
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", name)


def netns_path(name: str) -> Path:
    """The bind-mount file that names namespace ``name``."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad namespace name {name!r}")
    return NETNS_DIR / name


def list_netns() -> list[str]:
    """Names of the namespaces under /run/netns."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def enter(name: str) -> None:
    """Move the *calling thread* into namespace ``name`` (use only in a thread you own)."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_c().setns(fd, CLONE_NEWNET), "setns", name)
    finally:
        os.close(fd)


def run_in_netns(name: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` inside namespace ``name`` (None: here) and return its result.

    Exceptions raised by ``fn`` are re-raised in the caller.
    """
    if name is None:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter(name)
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def start_in_netns(name: str, fn: Callable[..., Any], *args: Any, thread_name: str | None = None,
                   **kwargs: Any) -> threading.Thread:
    """Start a daemon thread that enters ``name`` and runs ``fn`` (for servers and captures)."""
    def body() -> None:
        enter(name)
        fn(*args, **kwargs)

    thread = threading.Thread(target=body, name=thread_name or f"netns:{name}", daemon=True)
    thread.start()
    return thread


def socket_in_netns(name: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                    proto: int = 0) -> socket.socket:
    """A new socket that lives in namespace ``name``."""
    return run_in_netns(name, socket.socket, family, type, proto)


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount, as iproute2 does, so other mount namespaces see new names."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    libc = _c()
    path = str(NETNS_DIR).encode()
    if libc.mount(b"none", path, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    # Not a mount point yet: bind it onto itself, then share it.
    _check(libc.mount(path, path, b"none", MS_BIND | MS_REC, None), "mount --bind", str(NETNS_DIR))
    _check(libc.mount(b"none", path, b"none", MS_SHARED | MS_REC, None), "mount --make-shared",
           str(NETNS_DIR))


def create_netns(name: str) -> None:
    """Create namespace ``name`` (like ``ip netns add``); EEXIST if it exists."""
    path = netns_path(name)
    _share_netns_dir()
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)

    def make() -> None:
        # unshare() moves only this thread; the bind mount keeps the namespace alive after it ends.
        _check(_c().unshare(CLONE_NEWNET), "unshare", name)
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_c().mount(src, str(path).encode(), b"none", MS_BIND, None), "mount", name)

    try:
        box: dict[str, BaseException] = {}

        def body() -> None:
            try:
                make()
            except BaseException as exc:
                box["error"] = exc

        t = threading.Thread(target=body, name=f"netns-create:{name}")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove_netns(name: str) -> None:
    """Remove namespace ``name`` (like ``ip netns del``); missing is not an error."""
    path = netns_path(name)
    ret = _c().umount2(str(path).encode(), MNT_DETACH)
    if ret != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(ret, "umount", name)
    path.unlink(missing_ok=True)
