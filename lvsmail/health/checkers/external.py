"""``type: external``: run a command, exit status 0 means up — ldirectord's ``checktype = external``.

ldirectord's convention (``checkcommand``, see ldirectord(8)): the command is
run with four arguments appended — the virtual server's IP address (or the
firewall mark of an fwmark service), the virtual server's port, the real
server's IP address and the real server's (check) port — and exits 0 if the
server is up, non-zero otherwise. We do the same, with these differences:

* the command is split into words with shell rules and executed directly, not
  through a shell (no metacharacter surprises as root); its program is an
  absolute path (the cluster-file loader insists);
* fwmark services pass the mark and port ``0``; when the engine cannot say
  which virtual service the check belongs to, the real server's address and
  port are passed in the virtual server's place;
* stdin is /dev/null; stdout and stderr are collected (the last
  ``OUTPUT_LIMIT`` bytes kept) and their last line is quoted in a failure reason;
* at the timeout the command's whole process group (it runs in its own
  session) is killed with SIGKILL and reaped, so a hung script never piles up.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal

from lvsmail.health.checkers.dialogue import CheckFailed, Dialogue, clip
from lvsmail.spec import CheckSpec

#: Bytes of the command's output kept for the reason.
OUTPUT_LIMIT = 4096


def arguments(spec: CheckSpec, address: str, port: int, virtual: tuple[str, int | None] | None) -> list[str]:
    """The command line: the configured words plus ldirectord's four arguments."""
    vip, vport = virtual if virtual is not None else (address, port)
    return shlex.split(spec.command or "/bin/true") + [str(vip), str(vport if vport is not None else 0),
                                                      address, str(port)]


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """Read a stream to its end, keeping only the last OUTPUT_LIMIT bytes."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        del kept[:-OUTPUT_LIMIT]
    return bytes(kept)


def _last_line(output: bytes) -> str:
    """The last non-empty output line, for a reason."""
    lines = [ln.strip() for ln in output.decode("utf-8", "replace").splitlines() if ln.strip()]
    return clip(lines[-1]) if lines else ""


def _signal_name(number: int) -> str:
    """``SIGKILL``; ``signal 40`` for a number the signal module has no name for (most real-time signals)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


async def check(dlg: Dialogue, spec: CheckSpec, virtual: tuple[str, int | None] | None) -> None:
    """Run the command under the caller's timeout; returns on exit 0, raises CheckFailed otherwise."""
    argv = arguments(spec, dlg.address, dlg.port, virtual)
    program = argv[0]
    dlg.step = f"{program} to start"
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise CheckFailed(f"cannot run {program}: {exc.strerror or exc}") from None
    finished = False
    try:
        dlg.step = f"{program} to exit"
        output, status = await asyncio.gather(_tail(proc.stdout), proc.wait())
        finished = True
    finally:
        if not finished:  # timeout or cancellation: kill the command and anything it started
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    last = _last_line(output)
    if status == 0:
        dlg.did(f"{os.path.basename(program)} exited 0")
        dlg.decided = True
        return
    if status < 0:
        why = f"{program} killed by {_signal_name(-status)}"
    else:
        why = f"{program} exited with status {status}"
    raise CheckFailed(why + (f": {last}" if last else ""))
