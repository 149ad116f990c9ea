"""The units the package installs: systemd-analyze verify and security on them, and the director under W^X memory.

``systemd-analyze verify --root=DIR`` loads units as the manager of a system
rooted at DIR would, so the root holds this machine's own unit directory (for
the targets the units name) and stand-ins for the programs they run: verify
checks that /usr/bin/lvsmail and /sbin/modprobe are executable
there. Man pages are not checked here (``--man=no``): they are built with the
package.
"""

import ctypes
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvsmail.realserver import persist

ROOT = Path(__file__).resolve().parents[2]
DIRECTOR = ROOT / "directors" / "systemd" / "lvsmail-director.service"
REALSERVER = ROOT / "realservers" / "systemd" / "lvsmail-realserver.service"
ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

needs_analyze = pytest.mark.skipif(ANALYZE is None or not SYSTEM_UNITS.is_dir(),
                                   reason="systemd-analyze and a systemd unit directory are needed")


def _directives(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_the_units_run_the_packaged_program_and_document_its_man_pages():
    for unit in (DIRECTOR, REALSERVER):
        d = _directives(unit)
        commands = [v for k in ("ExecStart", "ExecStartPre", "ExecReload") for v in d.get(k, [])]
        assert all(c.lstrip("+-@!:").split()[0] in ("/usr/bin/lvsmail", "/sbin/modprobe", "/bin/kill")
                   for c in commands), commands
        assert d["Documentation"] == ["man:lvsmail(8) man:lvsmail-cluster(5)"]


def test_director_unit_is_notify_with_watchdog_restart_and_a_waiting_reload():
    d = _directives(DIRECTOR)
    assert d["Type"] == ["notify"] and d["WatchdogSec"] == ["30s"] and d["Restart"] == ["on-failure"]
    # Validate, SIGHUP, wait for the director's report: systemctl reload returns when it is done.
    assert d["ExecReload"] == ["/usr/bin/lvsmail director reload -c /etc/lvsmail/cluster.yaml --pid $MAINPID"]
    assert d["RestartPreventExitStatus"] == ["2"]  # a bad file: restarting cannot fix it
    # Only what it uses; the sysctls it writes stay writable, the rest of /proc/sys does not.
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"]
    assert d["ProtectKernelTunables"] == ["yes"] and "-/proc/sys/net/ipv4/vs" in d["ReadWritePaths"][0].split()
    # Installing or starting it loads no sysctl file: only the ip_vs module, for net.ipv4.vs.*.
    assert d["ExecStartPre"] == ["+/sbin/modprobe -a ip_vs"]
    assert "sysctl" not in " ".join(d["ExecStart"] + d["ExecStartPre"])


def _root(tmp_path: Path) -> Path:
    """A system root with this machine's units, the two lvsmail units, and stand-ins for the programs."""
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    shutil.copytree(SYSTEM_UNITS, units, symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc/systemd/system").mkdir(parents=True)
    for program in ("usr/bin/lvsmail", "sbin/modprobe", "bin/kill"):
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\nexit 0\n")
        (root / program).chmod(0o755)
    shutil.copy(DIRECTOR, units)
    shutil.copy(REALSERVER, units)
    return root


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", "--man=no", f"--root={root}", *units], capture_output=True,
                          text=True, timeout=120)


@needs_analyze
def test_systemd_analyze_verify_passes_on_both_units(tmp_path):
    root = _root(tmp_path)
    done = _verify(root, DIRECTOR.name, REALSERVER.name)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # The check is real: without the program, verify fails.
    (root / "usr/bin/lvsmail").unlink()
    missing = _verify(root, DIRECTOR.name)
    assert missing.returncode != 0 and "/usr/bin/lvsmail is not executable" in missing.stderr


@needs_analyze
def test_verify_passes_with_the_dropin_join_writes(tmp_path):
    root = _root(tmp_path)
    dropin = root / "etc/systemd/system" / f"{persist.UNIT_NAME}.d" / persist.DROPIN_NAME
    dropin.parent.mkdir(parents=True)
    argv = ["/usr/bin/lvsmail", "realserver", "join", "-c", "/etc/lvsmail/cluster.yaml", "--address", "198.51.100.20",
            "--state-file", "/var/lib/lvsmail/realserver.json"]
    dropin.write_text(persist.dropin_text(argv, "/var/lib/lvsmail/realserver.json", "clustermail", "/srv/mail"))
    done = _verify(root, REALSERVER.name)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    shown = subprocess.run([ANALYZE, "cat-config", f"--root={root}", f"systemd/system/{persist.UNIT_NAME}"],
                           capture_output=True, text=True, timeout=60)
    # The unit as the manager merges it: the packaged file, then the drop-in that replaces ExecStart.
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.rindex("ExecStart=/usr/bin/lvsmail realserver join -c") > \
        shown.stdout.index("ExecStart=\n") > shown.stdout.index("ExecStart=/usr/bin/lvsmail realserver join\n")


def _exposure(unit: Path) -> float:
    done = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                          timeout=120, cwd=unit.parent)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


@needs_analyze
def test_security_exposure_director_at_most_4_real_server_at_most_5(tmp_path):
    # Before this work both units scored 9.6 UNSAFE.
    assert _exposure(DIRECTOR) <= 4.0
    assert _exposure(REALSERVER) <= 5.0


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

MDWE_DIRECTOR = """
import asyncio, ctypes, errno, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77 if ctypes.get_errno() == errno.EINVAL else 1)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("writable and executable memory was still allowed")
except PermissionError:
    pass
# What the director loads and runs: the loop, checks, API, metrics, failover, netlink, uvloop when installed.
import lvsmail.console.api, lvsmail.failover.instances, lvsmail.console.metrics, lvsmail.ipvs.netlink
import lvsmail.health.engine, lvsmail.health.worker, lvsmail.vrrp.instance, lvsmail.realserver.arp, yaml, click
try:
    import uvloop
except ImportError:
    uvloop = None
from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS

async def main():
    d = Director(sys.argv[1], FakeIPVS(), repair_interval=0.05, state_dir=sys.argv[2])
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 30)
    await asyncio.sleep(0.5)
    d.request_reload()
    await asyncio.sleep(0.3)
    d.request_stop()
    await task
    print("ran", d.status_line())

asyncio.run(main())
if uvloop is not None:
    loop = uvloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
"""

CLUSTER = """\
cluster: mdwe
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    forwarding: tun
    realservers: [127.0.0.1]
    check: {type: smtp, interval: 0.1, timeout: 0.5, port: 9}
"""


def test_the_director_runs_without_writable_executable_memory(tmp_path):
    """MemoryDenyWriteExecute=yes: the kernel's equivalent (PR_SET_MDWE, Linux 6.3) on a real director run."""
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    done = subprocess.run([sys.executable, "-c", MDWE_DIRECTOR, str(tmp_path / "cluster.yaml"), str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ran 1 service, ")


def test_prctl_constant_is_the_kernels():
    """PR_SET_MDWE is 65 in <linux/prctl.h>; a wrong number would make the test above prove nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    got = libc.prctl(66, 0, 0, 0, 0)  # PR_GET_MDWE: 0 (not set) here, or EINVAL on an older kernel
    assert got == 0 or ctypes.get_errno() == errno.EINVAL
