"""The client side of a director's local API: where its socket is, and a blocking connection to it.

The commands (``status``, ``drain``, ``enable``, ``weight``, ``recheck``) and the
dashboard use it; it never imports the server, so a command that only talks
to a running director loads nothing of the daemon. The protocol is described
with the server (:mod:`lvsmail.console.api`).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from lvsmail.statefiles import StateDir


class APIError(Exception):
    """A request the director refused (the reply's ``error``)."""


def socket_path(state_dir: str | Path, config_path: str | Path) -> Path:
    """Where the director of ``config_path`` listens (unless its pointer file names a fallback)."""
    return StateDir.of(state_dir, config_path).socket


def find_socket(state_dir: str | Path, config_path: str | Path | None = None) -> Path | None:
    """The socket of the director of ``config_path``, or the only one in ``state_dir``; None if none.

    A director whose state directory cannot hold a socket leaves a ``.sock.path``
    file naming where it listens instead. APIError when several directors run
    and none was named.
    """
    state = Path(state_dir)
    if config_path is not None:
        stems = [Path(config_path).stem]
    else:
        stems = sorted({stem for stem, _ in StateDir.each(state, "socket")}
                       | {stem for stem, _ in StateDir.each(state, "socket_pointer")})
    found = [p for p in (_socket_of(state, stem) for stem in stems) if p is not None]
    if len(found) > 1:
        raise APIError(f"several directors answer in {state_dir} ({', '.join(p.name for p in found)}): "
                       "name one with -c FILE or --socket PATH")
    return found[0] if found else None


def _socket_of(state: Path, stem: str) -> Path | None:
    """The socket of one director: in the state directory, or where its pointer file says."""
    files = StateDir(state, stem)
    if files.socket.exists():
        return files.socket
    try:
        named = Path(files.socket_pointer.read_text().strip())
    except OSError:
        return None
    return named if named.exists() else None


class Client:
    """A blocking connection to a director's API (the commands use it; the dashboard too, between frames)."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except OSError as exc:
            self.sock.close()
            raise APIError(f"no director answers on {self.path}: {exc.strerror or exc}") from None
        self.file = self.sock.makefile("rb")

    def call(self, request: str, **args) -> dict:
        """Send one request and return the reply; APIError carries the director's refusal."""
        self.sock.sendall(json.dumps({"request": request, **args}).encode() + b"\n")
        reply = self.read()
        if not reply.get("ok"):
            raise APIError(reply.get("error", "refused without a reason"))
        return reply

    def read(self) -> dict:
        """The next line from the director (a reply, or an event of a stream)."""
        try:
            line = self.file.readline()
        except TimeoutError:
            raise APIError(f"the director on {self.path} did not answer in time") from None
        if not line:
            raise APIError(f"the director on {self.path} closed the connection")
        return json.loads(line)

    def close(self) -> None:
        """Close the connection."""
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        """The client itself, closed at the end of the ``with`` block."""
        return self

    def __exit__(self, *exc) -> None:
        """Close the connection."""
        self.close()
