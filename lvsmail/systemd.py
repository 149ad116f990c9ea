"""Running under systemd: the notify protocol, the watchdog and journal priorities, without libsystemd.

The notify protocol of sd_notify(3) is one datagram of newline-separated
``KEY=VALUE`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` names a socket in the abstract namespace). The watchdog of
sd_watchdog_enabled(3) is ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, which must
be ours when set); the daemon pings with ``WATCHDOG=1`` at half that interval.
Journal priorities are the ``<N>`` prefix of sd-daemon(3) on each line written
to a standard error that systemd connected to the journal (``$JOURNAL_STREAM``
names that stream as ``device:inode``); journald strips the prefix and files the
line at priority N (syslog's numbers, RFC 5424 section 6.2.1).

Outside systemd every function here is a no-op and logging keeps its terminal
format, so the same commands run by hand, in tests and in the lab.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("lvsmail.systemd")

#: The environment variables of the notify protocol, read once and then removed so that the
#: commands a daemon runs (checks, hooks) do not talk to systemd on its behalf.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

#: Shortest time between two STATUS= updates: systemctl status is read by people, a flapping
#: server must not turn the notify socket into a stream.
STATUS_PERIOD = 1.0


class Notifier:
    """sd_notify(3) for one daemon: READY, RELOADING, STOPPING, STATUS and WATCHDOG datagrams."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        #: Seconds between two watchdog pings (half of WatchdogSec=), None without a watchdog.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec and address else None
        self._sock: socket.socket | None = None
        self._failed = False  # a send failed: the first failure is a warning, later ones debug

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """The notifier systemd set up for this process; ``unset``: remove the variables from os.environ."""
        source = os.environ if env is None else env
        address = source.get("NOTIFY_SOCKET") or None
        usec = _watchdog_usec(source)
        if unset:
            for name in NOTIFY_VARIABLES:
                os.environ.pop(name, None)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True under systemd with Type=notify (a notify socket was given)."""
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification of ``KEY=VALUE`` lines; False (logged) when it could not be sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), target)
        except OSError as exc:
            # systemd gone (a manager re-exec) or the socket full: the daemon goes on, and says so once.
            (log.debug if self._failed else log.warning)("systemd: notification %s not sent to %s: %s",
                                                         lines[0].split("=")[0], self.address, exc)
            self._failed = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up or reload finished (READY=1), with the status line for ``systemctl status``."""
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = "reloading the cluster file") -> bool:
        """A reload starts: RELOADING=1 with MONOTONIC_USEC, which systemd 253 and later require."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                         *_status(status))

    def stopping(self, status: str | None = "stopping") -> bool:
        """The daemon is shutting down (STOPPING=1)."""
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """Replace the status line systemctl status shows."""
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        """One keep-alive (WATCHDOG=1); only the daemon's main loop may call this, never a thread."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> list[str]:
    # STATUS= is one line: a newline would start another assignment.
    return [] if text is None else ["STATUS=" + " ".join(text.split("\n"))]


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when it is for this process (sd_watchdog_enabled(3)); None otherwise or when malformed."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None  # meant for the process that started us, not for us
        usec = int(raw)
    except ValueError:
        log.warning("systemd: ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", raw, pid)
        return None
    return usec if usec > 0 else None


class Pacer:
    """When a periodic message is due: at most one per ``period`` seconds (pure; the caller owns the clock)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.last: float | None = None

    def wait(self, now: float) -> float:
        """Seconds until the next message may go (0: now)."""
        return 0.0 if self.last is None else max(0.0, self.last + self.period - now)

    def sent(self, now: float) -> None:
        """Record a message sent at ``now``."""
        self.last = now


class StatusReporter:
    """systemd's STATUS= line of a running daemon: sent when it changes, at most once per ``period``.

    A burst of changes (a mass failure, a VRRP flap) would otherwise send a
    datagram per transition; the last line of a burst still goes out, one
    ``period`` after the previous one. ``line`` builds the text when it is sent.
    The daemon calls :meth:`ready` once started and after each reload (READY=1
    carries the line), :meth:`publish` whenever the line may have changed, and
    :meth:`stopping` once, after which the line stays "stopping".
    """

    def __init__(self, notifier: Notifier, line: Callable[[], str], *, period: float = STATUS_PERIOD) -> None:
        self.notifier = notifier
        self.line = line
        self.sent: str | None = None  # the last line sent, to send only changes
        self._pacer = Pacer(period)
        self._later: asyncio.TimerHandle | None = None
        self._open = False  # between the first READY=1 and STOPPING=1

    def ready(self) -> None:
        """Send READY=1 with the line now (start-up done, or a reload finished, accepted or not)."""
        self.sent = self.line()
        self._pacer.sent(asyncio.get_running_loop().time())
        self._open = True
        self.notifier.ready(self.sent)

    def publish(self) -> None:
        """Send the line if it changed: at once, or ``period`` after the last one (call from the loop)."""
        if not self.notifier.enabled or not self._open or self._later is not None:
            return  # not under systemd; not started (READY=1 carries the first line); stopping; or a send is due
        loop = asyncio.get_running_loop()
        wait = self._pacer.wait(loop.time())
        if wait > 0:
            self._later = loop.call_later(wait, self._publish_later)
            return
        line = self.line()
        if line != self.sent:
            self.sent = line
            self._pacer.sent(loop.time())
            self.notifier.status(line)

    def stopping(self) -> None:
        """Send STOPPING=1; "stopping" stays the line while the daemon winds down."""
        self.notifier.stopping()
        self._open = False
        if self._later is not None:
            self._later.cancel()
            self._later = None

    def _publish_later(self) -> None:
        self._later = None
        self.publish()


def status_line(services: int, up: int, total: int, roles: Mapping[str, str], note: str | None = None) -> str:
    """What ``systemctl status`` shows: "3 services, 11/12 real servers up, VRRP MASTER" (pure).

    ``roles`` maps each VRRP instance to its role; one role shared by all
    instances is written once, otherwise each instance is named. ``note``
    (a rejected reload) goes last.
    """
    parts = [f"{services} service{'s' if services != 1 else ''}", f"{up}/{total} real servers up"]
    if roles:
        names = set(roles.values())
        if len(names) == 1:
            parts.append(f"VRRP {names.pop().upper()}")
        else:
            parts.append("VRRP " + " ".join(f"{name} {role.upper()}" for name, role in sorted(roles.items())))
    if note:
        parts.append(note)
    return ", ".join(parts)


# -- journal priorities ------------------------------------------------------------------

#: logging level -> syslog priority (RFC 5424: 2 crit, 3 err, 4 warning, 6 info, 7 debug).
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7
#: What an unprefixed line on standard error is in the journal: a command's error message
#: (config validate's file:line problems, a traceback), which `journalctl -p err` must show.
STDERR_PRIORITY = 3
_PREFIX = re.compile(r"<[0-7]>")


def priority(levelno: int) -> int:
    """The syslog priority of a logging level."""
    for level, prio in PRIORITIES:
        if levelno >= level:
            return prio
    return DEBUG_PRIORITY


def journal_stream(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal ($JOURNAL_STREAM is its device:inode).

    A child whose standard error was redirected elsewhere (a pipe, a file)
    inherits the variable but not the stream, so the inode must match.
    """
    raw = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = raw.partition(":")
    try:
        st = os.fstat(fd)
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):
        return False


class JournalFormatter(logging.Formatter):
    """No timestamp (the journal has one), and the record's priority before every line of it."""

    def format(self, record: logging.LogRecord) -> str:
        """The message, traceback included, with ``<N>`` on each line (a multi-line error stays an error)."""
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class PriorityStream:
    """A text stream that puts ``<default>`` before each line not already carrying a priority.

    Standard error under the journal: logging's lines come prefixed by
    JournalFormatter and pass unchanged; whatever else a command prints there
    (click's error messages, an uncaught traceback) is filed as an error.
    """

    def __init__(self, stream, default: int = STDERR_PRIORITY) -> None:
        self.stream = stream
        self.default = f"<{default}>"
        self._line_start = True

    def write(self, text: str) -> int:
        """Write ``text``, prefixing each line that begins in it and has no priority yet."""
        if not isinstance(text, str):
            # As io.TextIOWrapper does: click probes with write(b"") to tell text streams from binary ones.
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        out = []
        for piece in text.splitlines(keepends=True):
            if self._line_start and not _PREFIX.match(piece):
                out.append(self.default)
            out.append(piece)
            self._line_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)  # flush, fileno, isatty, encoding, buffer: the real stream's


def configure_logging(level: int, env: Mapping[str, str] | None = None) -> bool:
    """Set up the root logger for a command; True when standard error is the journal.

    On a terminal (or a pipe, a file): the usual ``time name level message``
    lines. Under systemd: no timestamp, a priority on every line, and the rest
    of standard error filed at err priority.
    """
    if not journal_stream(env):
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        return False
    if not isinstance(sys.stderr, PriorityStream):
        sys.stderr = PriorityStream(sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter("%(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    return True
