"""Run one command "in the lab": on this kernel if it has IPVS and IPIP, else in a VM.

The VM is virtme-ng booting a distribution kernel from /boot with the host's file
system shared read-only, so the command sees this very checkout and interpreter:
the one running this module (the venv deploy/setup made) comes first on the
guest's PATH, so ``python3`` and ``lvsmail`` there are the venv's.
KVM is never used: nested KVM on the machines we run on is slower than plain
emulation, and ``-cpu host`` crashes. Everything the guest must write goes to one
output directory that is mounted read-write (``--rwdir``); the exit status of the
command is written there too, because it is the one channel that survives a guest
that dies half-way (vng then exits 0 or with its own code).

Usage: ``python3 -m lvsmail.lab.vm run [--memory 2G] [--timeout S] -- CMD ...``
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: Repository root (the directory holding the ``lvsmail`` package).
REPO = Path(__file__).resolve().parents[2]

#: Kernel modules the lab needs; loaded before the command runs so every namespace has them.
LAB_MODULES = ("ip_vs", "ip_vs_wlc", "ip_vs_wrr", "ip_vs_rr", "ipip", "ip6_tunnel", "dummy")

#: Exit statuses of the runner itself (the command's own status is passed through).
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
EXIT_SETUP = 126
#: matplotlib's config and font cache for the guest, under the output directory (see warm_matplotlib).
MPL_DIR = ".matplotlib"

#: Environment variables copied from the caller into the guest.
PASSTHROUGH_ENV = ("CI", "PYTEST_ADDOPTS", "TERM", "COLUMNS")
PASSTHROUGH_PREFIXES = ("LVSMAIL_",)

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")


class LabError(RuntimeError):
    """The lab cannot run the command (no kernel, no vng, ...); the message says what to do."""


@dataclass(frozen=True)
class Capability:
    """Whether this kernel can run the lab directly, and why not."""

    ok: bool
    reason: str


def _modprobe(*args: str) -> bool:
    """Run /sbin/modprobe quietly; True on success."""
    exe = shutil.which("modprobe", path="/sbin:/usr/sbin:/bin:/usr/bin")
    if exe is None:
        return False
    return subprocess.run([exe, "-q", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def host_capability() -> Capability:
    """Check for root, IPVS (loading it if possible) and a loadable IPIP on this kernel."""
    if os.geteuid() != 0:
        return Capability(False, "not root")
    if not Path("/proc/net/ip_vs").exists():
        _modprobe("ip_vs")
        if not Path("/proc/net/ip_vs").exists():
            return Capability(False, f"kernel {os.uname().release} has no IPVS (modprobe ip_vs failed)")
    if not Path("/sys/module/ipip").exists() and not _modprobe("-n", "ipip"):
        return Capability(False, f"kernel {os.uname().release} has no IPIP module")
    return Capability(True, f"kernel {os.uname().release} has IPVS and IPIP")


def _version_key(path: Path) -> tuple:
    """Sort key for ``vmlinuz-6.1.0-56-amd64``: numeric fields compare as numbers."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", path.name))


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Path:
    """Newest ``vmlinuz-*-amd64`` under ``boot`` that has its modules installed."""
    candidates = sorted(boot.glob("vmlinuz-*-amd64"), key=_version_key)
    with_modules = [k for k in candidates if (modules / k.name[len("vmlinuz-"):]).is_dir()]
    if not with_modules:
        raise LabError(
            f"no lab kernel: no {boot}/vmlinuz-*-amd64 with modules in {modules}; "
            "install one with: apt-get install linux-image-amd64"
        )
    return with_modules[-1]


def interpreter_bin() -> str:
    """The directory of this interpreter's scripts: the venv's bin/ (``python3``, ``lvsmail``, ``vng``).

    Not resolved through symlinks: a venv's python is a link to the base interpreter, and only
    the venv's own path makes it the venv's interpreter.
    """
    return str(Path(sys.executable).parent)


def interpreter_first(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with this interpreter's bin/ first on PATH.

    vng starts its helpers (``virtme-run``, ...) by name, and the lab's command runs ``python3``
    and ``lvsmail`` by name: all of them must be the venv's, which is not on PATH by default.
    """
    environ = os.environ if environ is None else environ
    path = environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return dict(environ, PATH=f"{interpreter_bin()}:{path}")


def host_env(out_dir: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the command when this kernel is the lab: the caller's, this interpreter first on PATH."""
    return dict(interpreter_first(environ), LVSMAIL_PYTHON=sys.executable,
                LVSMAIL_IN_LAB="1", LVSMAIL_LAB_OUT=str(out_dir))


def guest_env(out_dir: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the command in the guest: this interpreter first on PATH, lab markers."""
    environ = os.environ if environ is None else environ
    bindir = interpreter_bin()
    env = {
        "PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LVSMAIL_IN_LAB": "1",
        "LVSMAIL_LAB_OUT": str(out_dir),
        "LVSMAIL_PYTHON": sys.executable,
        # The shared root is read-only in the guest: no .pyc, no pytest cache.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(REPO),
        # The guest's home is read-only: matplotlib (the chaos plot) would rebuild its font cache in a
        # temporary directory on every run, minutes under emulation. See warm_matplotlib().
        "MPLCONFIGDIR": str(out_dir / MPL_DIR),
    }
    for key, value in environ.items():
        if key in PASSTHROUGH_ENV or key.startswith(PASSTHROUGH_PREFIXES):
            env.setdefault(key, value)
    return env


def precompile(package: Path = REPO / "lvsmail") -> None:
    """Write lvsmail's bytecode here, where the guest will find it.

    The guest sees this file system read-only and so compiles every module from
    source in every process; under emulation that is seconds per process start
    (a director, each ``lvsmail`` command), paid again at every restart.
    """
    if not compileall.compile_dir(str(package), quiet=1):
        raise LabError(f"cannot compile {package} (a syntax error?)")


def warm_matplotlib(out_dir: Path) -> None:
    """Build matplotlib's font cache on this machine (seconds) where the guest will look for it.

    The guest shares this file system, so the cache's font paths hold there too. Nothing to do
    without matplotlib (the chaos plot is then skipped with a note) or when the cache exists.
    """
    config = out_dir / MPL_DIR
    if list(config.glob("fontlist-*.json")) or importlib.util.find_spec("matplotlib") is None:
        return
    config.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], capture_output=True, text=True,
                          env=dict(os.environ, MPLCONFIGDIR=str(config)), timeout=300)
    if done.returncode != 0:
        raise LabError(f"matplotlib could not build its font cache in {config}: {done.stderr.strip()[-300:]}")


def guest_script(cmd: list[str], env: dict[str, str], cwd: Path, status_file: Path,
                 modules: tuple[str, ...] = LAB_MODULES) -> str:
    """The /bin/sh script the guest runs: env, modules, the command, then its status to a file."""
    lines = ["#!/bin/sh", "# generated by lvsmail.lab.vm; runs inside the lab VM"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append(f"rm -f {shlex.quote(str(status_file))}")
    lines.append(f"modprobe -a {' '.join(modules)} 2>/dev/null || "
                 f"echo 'lab: some of {' '.join(modules)} did not load' >&2")
    lines.append(f"cd {shlex.quote(str(cwd))} || exit {EXIT_SETUP}")
    lines.append(shlex.join(cmd))
    lines.append("rc=$?")
    lines.append(f"echo $rc > {shlex.quote(str(status_file))}")
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def vng_argv(kernel: Path, script: Path, rwdirs: list[Path], memory: str = "2G",
             cpus: int | None = None, cwd: Path = REPO) -> list[str]:
    """The ``vng`` command line that boots ``kernel`` and runs ``script``."""
    # The venv's own vng first: another one on PATH may belong to an interpreter without lvsmail.
    vng = shutil.which("vng", path=interpreter_bin()) or shutil.which("vng") or str(Path(interpreter_bin()) / "vng")
    argv = [vng, "--run", str(kernel), "--disable-kvm", "--memory", memory, "--cwd", str(cwd)]
    if cpus:
        argv += ["--cpus", str(cpus)]
    for d in rwdirs:
        argv += ["--rwdir", str(d)]
    argv += ["--exec", f"sh {shlex.quote(str(script))}"]
    return argv


def _pump(proc: subprocess.Popen, log, stream) -> None:
    """Copy the child's output to the log and (cleaned of terminal codes) to ``stream``."""
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        clean = _ANSI.sub(b"", line)
        log.write(clean)
        log.flush()
        if stream is not None:
            stream.write(clean)
            stream.flush()


def _run_child(argv: list[str], log_path: Path, timeout: float | None, stream, env=None) -> int:
    """Run ``argv`` in its own process group, tee its output, kill the group on timeout."""
    import threading

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
        pump = threading.Thread(target=_pump, args=(proc, log, stream), daemon=True)
        pump.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            msg = f"lab: timed out after {timeout:.0f} s; stopping {argv[0]}\n".encode()
            log.write(msg)
            if stream is not None:
                stream.write(msg)
                stream.flush()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = EXIT_TIMEOUT
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        pump.join(timeout=5)
        return rc


def default_out_dir() -> Path:
    """``$LVSMAIL_LAB_OUT`` or ``lab-out/`` in the repository (ignored by git)."""
    return Path(os.environ.get("LVSMAIL_LAB_OUT") or REPO / "lab-out").resolve()


def run(cmd: list[str], memory: str = "2G", timeout: float | None = None, out_dir: Path | None = None,
        force_vm: bool = False, cpus: int | None = None, stream=None, cwd: Path = REPO) -> int:
    """Run ``cmd`` in the lab and return its exit status (124 timeout, 125 no status, 126 setup).

    Output goes to ``stream`` (default: this process's stdout) and to ``lab-run.log``
    in the output directory.
    """
    if not cmd:
        raise LabError("no command given")
    stream = sys.stdout.buffer if stream is None else stream
    out_dir = (out_dir or default_out_dir()).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "lab-run.log"
    cap = Capability(False, "VM forced") if force_vm else host_capability()
    if cap.ok:
        return _run_child(list(cmd), log_path, timeout, stream, env=host_env(out_dir))
    if os.geteuid() != 0:
        raise LabError("the lab VM needs root (network namespaces and IPVS inside run as root)")
    kernel = find_kernel()
    tag = f"{os.getpid()}-{int(time.time())}"
    script = out_dir / f".lab-run-{tag}.sh"
    status_file = out_dir / f".lab-run-{tag}.status"
    warm_matplotlib(out_dir)
    precompile()
    script.write_text(guest_script(list(cmd), guest_env(out_dir), cwd, status_file))
    argv = vng_argv(kernel, script, [out_dir], memory=memory, cpus=cpus, cwd=cwd)
    note = f"lab: {cap.reason}; booting {kernel.name} under emulation (no KVM)\n".encode()
    stream.write(note)
    stream.flush()
    started = time.monotonic()
    try:
        vng_rc = _run_child(argv, log_path, timeout, stream, env=interpreter_first())
        try:
            rc = int(status_file.read_text().strip())
        except (OSError, ValueError):
            rc = vng_rc if vng_rc not in (0, None) else EXIT_NO_STATUS
            stream.write(f"lab: the guest reported no exit status (vng exited {vng_rc})\n".encode())
    finally:
        script.unlink(missing_ok=True)
        status_file.unlink(missing_ok=True)
    stream.write(f"lab: finished in {time.monotonic() - started:.0f} s with exit status {rc}\n".encode())
    stream.flush()
    return rc


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``run [options] -- CMD ...``."""
    parser = argparse.ArgumentParser(prog="python3 -m lvsmail.lab.vm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("run", help="run a command in the lab (this kernel or a VM)")
    p.add_argument("--memory", default="2G", help="VM memory (default 2G)")
    p.add_argument("--cpus", type=int, default=None, help="VM CPUs (default: as many as the host)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--out", type=Path, default=None, help="output directory, writable in the VM")
    p.add_argument("--vm", action="store_true", help="use the VM even if this kernel would do")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    try:
        return run(cmd, memory=args.memory, timeout=args.timeout, out_dir=args.out,
                   force_vm=args.vm, cpus=args.cpus)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return EXIT_SETUP


if __name__ == "__main__":
    sys.exit(main())
