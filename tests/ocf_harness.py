"""Running the OCF resource agent (directors/ocf/lvsmail-director) as Pacemaker's executor does.

Pacemaker runs an agent with the action as its only argument and everything else
in the environment: ``OCF_ROOT``, ``OCF_RESOURCE_INSTANCE``, one ``OCF_RESKEY_name``
per parameter and ``OCF_RESKEY_CRM_meta_*`` for the operation (its timeout and
interval in milliseconds). The unit tests and the kernel test share this module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The agent as the repository holds it (the Debian package installs it as .../resource.d/lvsmail/director).
AGENT = REPO / "directors" / "ocf" / "lvsmail-director"
#: Where Debian's resource-agents package puts the OCF shell library the agent sources.
OCF_ROOT = Path("/usr/lib/ocf")

#: The OCF exit codes (Resource Agent API 1.1).
OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_UNIMPLEMENTED = 0, 1, 3
OCF_ERR_INSTALLED, OCF_ERR_CONFIGURED, OCF_NOT_RUNNING = 5, 6, 7


#: The cluster file the agent's tests run with: documentation addresses (RFC 5737), no health checks
#: (nothing is sent to the real servers), no failover: section (Pacemaker owns the VIP).
CLUSTER = """\
cluster: ocfdemo
vips:
  - 192.0.2.33
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    scheduler: wlc
    forwarding: tun
    realservers:
      - address: 198.51.100.20
        weight: {weight}
      - address: 198.51.100.32
"""


def cluster_yaml(weight: int = 1) -> str:
    """The test cluster file, with this weight for the first real server."""
    return CLUSTER.format(weight=weight)


def missing_tools() -> str | None:
    """Why the agent cannot run on this machine (no bash, no resource-agents), or None."""
    if shutil.which("bash") is None:
        return "bash is not installed"
    if not (OCF_ROOT / "lib" / "heartbeat" / "ocf-shellfuncs").exists():
        return ("Debian's resource-agents package (the OCF shell library) is not installed: "
                "apt-get install resource-agents")
    return None


def write_wrapper(path: Path) -> Path:
    """An ``lvsmail`` command for the agent's ``binary`` parameter: this interpreter and checkout.

    It ends with exec, as the agent requires of a wrapper, so the pid the agent records is the director's.
    """
    path.write_text("#!/bin/sh\n"
                    f"PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} -m lvsmail \"$@\"\n")
    path.chmod(0o755)
    return path


@dataclass
class Resource:
    """One configured resource of the agent: its instance name and parameters."""

    name: str
    params: dict[str, str]
    #: Prefix of the agent's command line (``ip netns exec NS`` in the kernel test).
    prefix: tuple[str, ...] = ()

    def env(self, *, timeout_ms: int = 20000, interval_ms: int = 10000, **extra: str) -> dict[str, str]:
        """The environment Pacemaker's executor gives the agent for one operation."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCF_")}
        env.update({"OCF_ROOT": str(OCF_ROOT), "OCF_RESOURCE_INSTANCE": self.name,
                    "OCF_RA_VERSION_MAJOR": "1", "OCF_RA_VERSION_MINOR": "1",
                    "OCF_RESKEY_CRM_meta_timeout": str(timeout_ms),
                    "OCF_RESKEY_CRM_meta_interval": str(interval_ms)})
        env.update({f"OCF_RESKEY_{k}": v for k, v in self.params.items()})
        env.update(extra)
        return env

    def run(self, action: str, *, timeout: float = 120.0, **env_extra) -> subprocess.CompletedProcess:
        """Run one action; the result carries the exit code and the agent's output."""
        return subprocess.run([*self.prefix, str(AGENT), action], env=self.env(**env_extra),
                              capture_output=True, text=True, timeout=timeout)


def exit_reason(result: subprocess.CompletedProcess) -> str:
    """The agent's ``ocf-exit-reason:`` line (what Pacemaker shows as the failure's reason), or ''."""
    prefix = "ocf-exit-reason:"
    lines = [line[len(prefix):] for line in result.stderr.splitlines() if line.startswith(prefix)]
    return lines[-1] if lines else ""
