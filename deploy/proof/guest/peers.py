"""The proof's peers in the guest: real servers that answer the director's checks, and a client.

Runs with the guest's own Debian python3 and its standard library only (the guest is offline).

    python3 peers.py serve           SMTP on :25 and HTTP on :80 of every local address
    python3 peers.py hold HOST PORT DIR
                                     open an SMTP session through the VIP, read the greeting,
                                     write DIR/connected, wait for DIR/go, then send NOOP and
                                     QUIT: exit 0 only if the same session still answers 250

The held session is what "a restart of the director does not interrupt mail" means: the
connection lives in the kernel's IPVS connection table, and must keep reaching its real server
while the director process is replaced.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

HOSTNAME = "rs.proof.example.org"
#: The page the director's HTTP check asks for must contain this text (the seed's receive=).
PAGE = b"<html><body>test page</body></html>\n"


async def smtp_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal RFC 5321 server dialogue: greeting, EHLO/HELO, NOOP, QUIT; 250 to the rest."""
    try:
        writer.write(f"220 {HOSTNAME} ESMTP proof\r\n".encode())
        await writer.drain()
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                writer.write(f"250-{HOSTNAME}\r\n250 8BITMIME\r\n".encode())
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # the client went away: nothing to answer
    finally:
        writer.close()


async def http_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer any HTTP/1.x request with the page the check expects, then close."""
    try:
        while await reader.readline() not in (b"\r\n", b"\n", b""):
            pass
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(PAGE), PAGE))
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve() -> None:
    """Listen on 0.0.0.0:25 and :80 until killed (the VIP reaches them decapsulated on tunl0)."""
    smtp = await asyncio.start_server(smtp_session, "0.0.0.0", 25, reuse_address=True)
    http = await asyncio.start_server(http_session, "0.0.0.0", 80, reuse_address=True)
    print("peers: serving SMTP :25 and HTTP :80", flush=True)
    async with smtp, http:
        await asyncio.gather(smtp.serve_forever(), http.serve_forever())


def reply(sock: socket.socket) -> str:
    """Read one SMTP reply (the last line of a multi-line one decides) within the socket timeout."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        done = [ln for ln in lines[:-1] if len(ln) >= 4 and ln[3:4] == b" "]
        if done:
            return data.decode(errors="replace").strip()


def hold(host: str, port: int, where: Path, wait: float = 900.0) -> int:
    """The held session; its outcome is written to where/result and is the exit status."""
    with socket.create_connection((host, port), timeout=10) as sock:
        greeting = reply(sock)
        if not greeting.startswith("220"):
            (where / "result").write_text(f"bad greeting {greeting!r}\n")
            return 1
        own = sock.getsockname()
        local = f"{own[0]}:{own[1]:d}"
        (where / "connected").write_text(f"{local} {greeting}\n")
        deadline = time.monotonic() + wait
        while not (where / "go").exists():
            if time.monotonic() > deadline:
                (where / "result").write_text("never told to go on\n")
                return 1
            time.sleep(0.1)
        try:
            sock.sendall(b"NOOP\r\n")
            answer = reply(sock)
            sock.sendall(b"QUIT\r\n")
            bye = reply(sock)
        except OSError as exc:
            (where / "result").write_text(f"session {local} broken: {exc}\n")
            return 1
        (where / "result").write_text(f"session {local}: NOOP -> {answer}; QUIT -> {bye}\n")
        return 0 if answer.startswith("250") and bye.startswith("221") else 1


def main(argv: list[str]) -> int:
    """Dispatch the two roles."""
    if argv[:1] == ["serve"]:
        asyncio.run(serve())
        return 0
    if argv[:1] == ["hold"] and len(argv) == 4:
        return hold(argv[1], int(argv[2]), Path(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
