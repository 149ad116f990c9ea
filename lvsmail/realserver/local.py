"""The real backends of a join on this machine: netlink, /proc/sys, postconf, doveconf, the directors' API."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

from lvsmail.net.realserver import local_context
from lvsmail.realserver.changes import JoinContext, JoinError, Postconf
from lvsmail.realserver.mailstack import MailPaths
from lvsmail.spec import RegistrationSpec


def doveconf_effective(main_config: str, setting: str) -> str:
    """What Dovecot will use for ``setting`` with ``main_config`` (``doveconf -c FILE -h SETTING``)."""
    try:
        done = subprocess.run(["doveconf", "-c", main_config, "-h", setting], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
    except FileNotFoundError:
        raise JoinError("doveconf not found: is Dovecot installed?") from None
    if done.returncode != 0:
        raise JoinError(f"doveconf -c {main_config}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


class Reloader:
    """Reload a daemon whose configuration join or leave changed, if it is running."""

    def __init__(self, paths: MailPaths) -> None:
        self.paths = paths

    def __call__(self, service: str) -> str:
        """Reload and say what happened (a daemon that is not running is not an error)."""
        if service == "postfix":
            status = _run(["postfix", "-c", self.paths.postfix_dir, "status"])
            if status is None or status.returncode != 0:
                return f"postfix ({self.paths.postfix_dir}) is not running: its new settings apply when it starts"
            done = _run(["postfix", "-c", self.paths.postfix_dir, "reload"])
            return _said("postfix reload", done)
        if service == "dovecot":
            done = _run(["doveadm", "-c", self.paths.dovecot_config, "reload"])
            if done is None or done.returncode != 0:
                return f"dovecot ({self.paths.dovecot_config}) not reloaded (not running?): new settings apply " \
                       "when it starts"
            return "dovecot reloaded"
        if service == "courier":
            if self.paths.courier_dir != "/etc/courier" or not shutil.which("systemctl"):
                return f"Courier-IMAP settings in {self.paths.courier_dir} changed: restart that instance"
            return _said("systemctl try-restart courier-imap", _run(["systemctl", "try-restart", "courier-imap"]))
        if service == "systemd":
            # The boot unit or its drop-in changed: the manager reads unit files only on daemon-reload
            # (sd_booted(3): /run/systemd/system exists only when systemd is PID 1).
            if not os.path.isdir("/run/systemd/system"):
                return "systemd is not running here: the boot unit applies at the next boot"
            return _said("systemctl daemon-reload", _run(["systemctl", "daemon-reload"]))
        return f"{service}: nothing to reload"


def _run(argv: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    except FileNotFoundError:
        return None


def _said(what: str, done: subprocess.CompletedProcess | None) -> str:
    if done is None:
        return f"{what}: command not found"
    if done.returncode != 0:
        return f"{what} failed: {(done.stderr or done.stdout).strip()}"
    return f"{what}: done"


class ApiRegistrar:
    """The registration API's client, called synchronously (join and leave are plain commands)."""

    def __init__(self, spec: RegistrationSpec, drain_timeout: float | None = None) -> None:
        self.spec = spec
        self.drain_timeout = drain_timeout

    def register(self, address: str, services: tuple[str, ...], weight: int) -> None:
        """Offer this server to every director."""
        from lvsmail.registration.client import Member, RegistrationError, register

        try:
            asyncio.run(register(self.spec, Member(address=address, services=services, weight=weight)))
        except RegistrationError as exc:
            raise JoinError(f"{exc}: " + "; ".join(r.describe() for r in exc.replies)) from None

    def registered(self, address: str, services: tuple[str, ...], weight: int) -> bool:
        """Ask every director; a 404 from any means not (fully) registered."""
        from lvsmail.registration.client import RegistrationError, lookup

        try:
            replies = asyncio.run(lookup(self.spec, address))
        except RegistrationError as exc:
            if any(r.status == 404 for r in exc.replies):
                return False
            raise JoinError(f"{exc}: " + "; ".join(r.describe() for r in exc.replies)) from None
        for reply in replies:
            member = reply.body.get("member") or {}
            names = sorted(s.get("name") for s in member.get("services", []) if isinstance(s, dict))
            if names != sorted(services) or member.get("weight") != weight or member.get("drained"):
                return False
        return True

    def drain_and_deregister(self, address: str) -> str:
        """Weight 0, wait for active connections to end (or the timeout), then deregister."""
        from lvsmail.registration.client import RegistrationError, deregister, drain

        try:
            result = asyncio.run(drain(self.spec, address, timeout=self.drain_timeout))
            asyncio.run(deregister(self.spec, address))
        except RegistrationError as exc:
            raise JoinError(f"{exc}: " + "; ".join(r.describe() for r in exc.replies)) from None
        if result.drained:
            return f"drained in {result.waited:.1f} s, deregistered"
        return (f"drain timed out after {result.waited:.1f} s with {sum(result.active.values())} active "
                "connection(s); deregistered anyway")


def local_join_context(paths: MailPaths, registration: RegistrationSpec | None,
                       drain_timeout: float | None = None, reload: bool = True) -> JoinContext:
    """Backends for this machine (close ``ctx.net.net`` when done)."""
    return JoinContext(
        net=local_context(), postconf=Postconf(),
        registrar=ApiRegistrar(registration, drain_timeout) if registration is not None else None,
        dovecot_effective=doveconf_effective if shutil.which("doveconf") else None,
        reload=Reloader(paths) if reload else None,
    )
