"""Real mail servers for the lab cluster: a private Postfix, Dovecot and health page per real server.

Every real server of the lab runs Debian's own Postfix and Dovecot, each as a
private instance with its configuration, queue, state and logs in the real
server's own directory (the machine's /etc/postfix and /etc/dovecot are never
written, no system service is started). The instances start with a minimal
configuration; ``lvsmail realserver join`` then writes the cluster's settings
into them (main.cf parameters, a Dovecot drop-in, the health page), exactly as
on a production real server. All of them deliver into one shared directory, the
stand-in for the seed's shared storage: a message accepted by any real server is
readable over IMAP through any other.

Mailboxes are virtual (Postfix ``virtual`` delivery into
``boxes/DOMAIN/USER/``, Maildir), owned by ``nobody`` so no system account is
needed, and listed in one ``texthash`` map and one Dovecot passwd-file that
every instance reads.
"""

from __future__ import annotations

import email.parser
import email.policy
import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The mail domain and the name every real server greets with (``mail.hostname``).
DOMAIN = "example.org"
HOSTNAME = "clustermail.example.org"
#: Test mailboxes: user name -> password (Dovecot passwd-file, PLAIN scheme: a lab, not a secret).
USERS = {"alice": "lab-Alice-1", "bob": "lab-Bob-2", "carol": "lab-Carol-3", "dave": "lab-Dave-4"}
#: Postfix's master.cf for a real server: SMTP on port 25 and local delivery (no content filter).
MASTER_CF = """\
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

#: Where Debian keeps Postfix's daemons (``postconf -h daemon_directory``).
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"
#: Queue directories: name, mode, owned by the setgid group (postdrop) too.
QUEUE_DIRS = (("active", 0o700, False), ("bounce", 0o700, False), ("corrupt", 0o700, False),
              ("defer", 0o700, False), ("deferred", 0o700, False), ("flush", 0o700, False), ("hold", 0o700, False),
              ("incoming", 0o700, False), ("private", 0o700, False), ("maildrop", 0o730, True),
              ("public", 0o710, True), ("pid", 0o755, False), ("saved", 0o700, False), ("trace", 0o700, False))
#: Runs a command in a real server's namespace: (argv) -> argv with ``ip netns exec NS`` in front.
NsArgv = Callable[[Sequence[str]], list[str]]


class MailStackError(RuntimeError):
    """A mail daemon of the lab did not start or stop; the message quotes its log."""


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass
class SharedStore:
    """The shared mail storage: Maildirs, the mailbox map and the IMAP password file."""

    path: Path

    @property
    def boxes(self) -> Path:
        """Postfix's virtual_mailbox_base and Dovecot's mail root (``boxes/DOMAIN/USER/``)."""
        return self.path / "boxes"

    @property
    def vmailbox(self) -> Path:
        """The texthash map of mailboxes (Postfix virtual_mailbox_maps)."""
        return self.path / "vmailbox"

    @property
    def users(self) -> Path:
        """Dovecot's passwd-file of the same mailboxes."""
        return self.path / "users"

    def create(self) -> SharedStore:
        """Directories and the two account files; mailboxes belong to ``nobody`` (no system users)."""
        nobody = pwd.getpwnam("nobody")
        self.boxes.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o755)
        os.chown(self.boxes, nobody.pw_uid, nobody.pw_gid)
        # Postfix virtual(8): a trailing slash makes the mailbox a Maildir.
        self.vmailbox.write_text("".join(f"{u}@{DOMAIN} {DOMAIN}/{u}/\n" for u in USERS))
        self.users.write_text("".join(f"{u}@{DOMAIN}:{{PLAIN}}{p}\n" for u, p in USERS.items()))
        os.chmod(self.users, 0o600)
        shutil.chown(self.users, "dovecot", "dovecot")  # read by Dovecot's auth process
        return self

    def maildir_files(self) -> Iterator[tuple[str, Path]]:
        """Every delivered message file: (mailbox, path), from ``new/`` and ``cur/`` (RFC-less Maildir spec)."""
        for user in USERS:
            base = self.boxes / DOMAIN / user
            for sub in ("new", "cur"):
                d = base / sub
                if d.is_dir():
                    for f in sorted(d.iterdir()):
                        yield f"{user}@{DOMAIN}", f

    def message_ids(self) -> dict[str, list[str]]:
        """Message-ID (without angle brackets) -> mailboxes it was found in (one entry per copy)."""
        parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
        found: dict[str, list[str]] = {}
        for box, path in self.maildir_files():
            try:
                with open(path, "rb") as f:
                    headers = parser.parse(f)
            except FileNotFoundError:  # moved from new/ to cur/ by an IMAP session meanwhile
                continue
            mid = (headers.get("Message-ID") or "").strip().strip("<>")  # RFC 5322 msg-id without brackets
            found.setdefault(mid, []).append(box)
        return found


class PostfixInstance:
    """A private Postfix for one real server (``postfix -c DIR``): configuration, queue, data, log."""

    def __init__(self, base: Path, name: str, ns_argv: NsArgv) -> None:
        self.base, self.name, self.ns_argv = base, name, ns_argv
        self.conf = base / "postfix"
        self.spool = base / "spool"
        self.data = base / "data"
        self.log = base / "postfix.log"

    def create(self) -> PostfixInstance:
        """main.cf and master.cf; the cluster settings come from ``realserver join`` later."""
        for d in (self.conf, self.spool, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = all
inet_protocols = ipv4
myhostname = {self.name}.{DOMAIN}
# The greeting names the real server, so clients and tests see where the director sent them.
smtpd_banner = $myhostname ESMTP {self.name}
alias_maps =
alias_database =
# No DNS inside the lab namespaces: never wait for resolvers.
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
# The chaos run holds SMTP sessions open with a NOOP every 2 s across director faults. At the default
# of 100 junk commands Postfix ends such a session itself after about 4 minutes ("too many errors after
# NOOP"), and the run would count that against the takeover the session spans.
smtpd_junk_command_limit = 100000
maillog_file = {self.log}
maillog_file_prefixes = {self.base}
""")
        (self.conf / "master.cf").write_text(MASTER_CF)
        return self

    def start(self) -> None:
        """Start the master daemon in the real server's namespace, as ``postfix start`` ends up doing.

        ``master -w`` directly: postfix-script's checks take minutes of shell under emulation.
        Its queue directories are made here instead, as postfix-files lists them.
        """
        if self.master_pid():
            return
        self.make_queue()
        master = Path(DAEMON_DIRECTORY) / "master"
        done = subprocess.run(self.ns_argv([str(master), "-c", str(self.conf), "-w"]), capture_output=True,
                              text=True, timeout=180, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise MailStackError(f"{self.name}: postfix master did not start: {done.stderr.strip()}\n"
                                 f"{_tail(self.log)}")

    def make_queue(self) -> None:
        """The queue directories with Postfix's owners and modes (postfix-files, Postfix 3.7)."""
        postfix, postdrop = pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postdrop").gr_gid
        self.spool.mkdir(parents=True, exist_ok=True)
        os.chmod(self.spool, 0o755)
        for name, mode, group in QUEUE_DIRS:
            d = self.spool / name
            d.mkdir(exist_ok=True)
            os.chown(d, 0 if name == "pid" else postfix, postdrop if group else (0 if name == "pid" else -1))
            os.chmod(d, mode)

    def stop(self) -> None:
        """What ``postfix stop`` does (SIGTERM to the master, which stops its children); then SIGKILL what remains.

        Signalled directly: postfix-script costs seconds of shell under emulation.
        """
        self.thaw()
        pid = self.master_pid()
        if pid is None:
            return
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill()

    def master_pid(self) -> int | None:
        """The running master's process id (from its pid file, checked against /proc)."""
        try:
            pid = int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) and _comm(pid) == "master" else None

    def processes(self) -> list[int]:
        """The master and every process of its session (smtpd, qmgr, ...): the instance's processes."""
        pid = self.master_pid()
        return [pid, *_session_members(pid)] if pid else []

    def kill(self) -> None:
        """SIGKILL every process of the instance (a crash: the queue stays on disk)."""
        for pid in self.processes():
            _signal(pid, signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP every process: connections are still accepted by the kernel, nobody greets."""
        for pid in self.processes():
            _signal(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT every process of the instance."""
        for pid in self.processes():
            _signal(pid, signal.SIGCONT)

    def postconf(self, *settings: str) -> None:
        """Set main.cf parameters (``name=value``) and reload if running."""
        done = subprocess.run(["postconf", "-c", str(self.conf), "-e", *settings], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise MailStackError(f"{self.name}: postconf {' '.join(settings)}: {done.stderr.strip()}")
        pid = self.master_pid()
        if pid:
            _signal(pid, signal.SIGHUP)  # what `postfix reload` does, without its shell script

    def flush(self) -> None:
        """``postqueue -f``: try every deferred message now."""
        subprocess.run(self.ns_argv(["postqueue", "-c", str(self.conf), "-f"]), capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)

    def queued(self) -> int:
        """Messages in the queue (counted on disk: works whether or not Postfix runs)."""
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            d = self.spool / sub
            if d.is_dir():
                total += sum(len(files) for _, _, files in os.walk(d))
        return total


class DovecotInstance:
    """A private Dovecot (IMAP only) for one real server, in the foreground as our child."""

    def __init__(self, base: Path, store: SharedStore, ns_argv: NsArgv) -> None:
        self.base, self.store, self.ns_argv = base, store, ns_argv
        self.dir = base / "dovecot"
        self.config = self.dir / "dovecot.conf"
        self.log = base / "dovecot.log"
        self.pid_file = base / "dovecot.pid"

    def create(self) -> DovecotInstance:
        """dovecot.conf including conf.d, where ``realserver join`` writes the mailbox location."""
        if len(str(self.base)) > 60:
            # Dovecot's sockets (e.g. dcrun/token-login/tokenlogin) must fit a 108-byte sun_path.
            raise MailStackError(f"{self.base}: too long a path for Dovecot's unix sockets; use a shorter "
                                 "--state-dir")
        for sub in ("dovecot/conf.d", "dcrun", "dcstate"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        nobody = pwd.getpwnam("nobody")
        self.config.write_text(f"""\
base_dir = {self.base}/dcrun
state_dir = {self.base}/dcstate
log_path = {self.log}
protocols = imap
listen = *
ssl = no
# A lab on documentation addresses: plain-text LOGIN without TLS is allowed (RFC 9051 would want TLS).
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.store.users}
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={self.store.boxes}/%d/%n
}}
default_internal_user = dovecot
default_login_user = dovenull
# Dovecot's default starts a login process per connection ("high-security mode"): under emulation
# that is seconds per greeting, and the directors' IMAP checks time out. Its documented
# "high-performance mode": long-lived login processes, one kept ready.
service imap-login {{
  service_count = 0
  process_min_avail = 1
}}
!include_try conf.d/*.conf
""")
        return self

    def start(self, popen: Callable[..., subprocess.Popen]) -> subprocess.Popen:
        """``dovecot -F`` through ``popen`` (which runs it in the namespace); records its pid."""
        with open(self.base / "dovecot.stderr", "ab") as err:
            proc = popen(["dovecot", "-F", "-c", str(self.config)], stdout=err, stderr=subprocess.STDOUT)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def pid(self) -> int | None:
        """The running Dovecot master's pid, or None."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop Dovecot and every process it started (its process group)."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGCONT)
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def health_page_server(directory: Path) -> list[str]:
    """Command line of the webmail stand-in: a static HTTP server for the health page, on port 80.

    BusyBox's httpd (deploy/setup installs busybox-static for the VM) when present: under
    emulation a Python interpreter per real server costs seconds of start-up each.
    """
    import sys

    busybox = shutil.which("busybox")
    if busybox:
        return [busybox, "httpd", "-f", "-p", "80", "-h", str(directory)]
    return [sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", str(directory)]


# -- processes ----------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _session_members(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (Postfix's master calls setsid; its children stay in it)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == sid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 4 and int(fields[3]) == sid:  # fields after comm: state ppid pgrp session
            out.append(int(entry))
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
