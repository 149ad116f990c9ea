"""``lvsmail director reload`` (the unit's ExecReload): validate, ask the running director, wait for its report."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from test_director_daemon import HTTP, HTTP_SERVICE, SMTP, SMTP_SERVICE

from lvsmail.director.daemon import Director
from lvsmail.ipvs.fake import FakeIPVS
from support import until
from support.cluster import cluster_yaml, service

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


async def _reload(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lvsmail", "director", "reload", *args,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def test_reload_through_the_api_returns_once_the_new_table_is_in_the_kernel(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(SMTP_SERVICE, HTTP_SERVICE))
    kernel, state = FakeIPVS(), tmp_path / "state"

    async def go():
        d = Director(str(path), kernel, repair_interval=30, state_dir=str(state))
        task = asyncio.create_task(d.run())
        await asyncio.wait_for(d.ready.wait(), 10)
        await until(lambda: d.api is not None)
        assert set(kernel.table) == {SMTP, HTTP}
        path.write_text(cluster_yaml(SMTP_SERVICE))
        ok = await _reload("-c", str(path), "--state-dir", str(state))
        after_ok = set(kernel.table)  # read at once: the command returned only when the reload was done
        path.write_text(cluster_yaml(SMTP_SERVICE, service("broken", 99999)))
        bad = await _reload("-c", str(path), "--state-dir", str(state))
        d.request_stop()
        await task
        return ok, after_ok, bad

    ok, after_ok, bad = asyncio.run(go())
    assert ok[0] == 0 and ok[1].startswith(f"reloaded {path}: 1 services, 2 real servers in "), ok
    assert after_ok == {SMTP}
    # A bad file is refused before the director is asked: every problem, exit 2, table kept.
    assert bad[0] == 2 and f"{path}:" in bad[2] and kernel.table.keys() == {SMTP}


SERVE = """
import asyncio, sys
from lvsmail.director.daemon import Director, serve
from lvsmail.ipvs.fake import FakeIPVS

kernel = FakeIPVS()
d = Director(sys.argv[1], kernel, repair_interval=30, state_dir=sys.argv[2])

async def main():
    task = asyncio.create_task(serve(d))
    await d.ready.wait()
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


def test_reload_by_pid_signals_the_director_as_systemd_would(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(SMTP_SERVICE, HTTP_SERVICE))
    state = tmp_path / "state"
    daemon = subprocess.Popen([sys.executable, "-c", SERVE, str(path), str(state)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert daemon.stdout.readline().strip() == "ready"
        path.write_text(cluster_yaml(SMTP_SERVICE))
        done = subprocess.run([sys.executable, "-m", "lvsmail", "director", "reload", "-c", str(path),
                               "--state-dir", str(state), "--pid", str(daemon.pid)],
                              capture_output=True, text=True, env=ENV, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"reloaded {path}: 1 services")
        # When the command returned, the director had already synced the kernel to the new file.
        owned = json.loads((state / "cluster.owned.json").read_text())
        assert [(o["addr"], o["port"]) for o in owned] == [("192.0.2.33", 25)]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert daemon.returncode == 0


def test_a_director_that_never_reports_makes_reload_exit_1(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(SMTP_SERVICE))
    deaf = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""\
        import signal, sys, time
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert deaf.stdout.readline().strip() == "ready"
        done = subprocess.run([sys.executable, "-m", "lvsmail", "director", "reload", "-c", str(path),
                               "--state-dir", str(tmp_path), "--pid", str(deaf.pid), "--timeout", "0.5"],
                              capture_output=True, text=True, env=ENV, timeout=60)
    finally:
        deaf.kill()
        deaf.wait()
    assert done.returncode == 1 and "did not report the reload within 0.5 s" in done.stderr


def test_reload_of_a_missing_process_exits_2(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(SMTP_SERVICE))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    done = subprocess.run([sys.executable, "-m", "lvsmail", "director", "reload", "-c", str(path),
                           "--state-dir", str(tmp_path), "--pid", str(gone.pid)],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 2 and f"pid {gone.pid}" in done.stderr
