"""Logging under systemd: the journal gets each line's priority and no timestamp of ours; a terminal keeps its format.

The commands run as real processes whose standard error is a file, with
$JOURNAL_STREAM naming that file's device:inode, as systemd names the stream it
connects to the journal.
"""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lvsmail.systemd import JournalFormatter, PriorityStream, journal_stream, priority

ROOT = Path(__file__).resolve().parents[2]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

LOGS = """
import logging, sys
from lvsmail.systemd import configure_logging
print("journal" if configure_logging(logging.DEBUG) else "terminal", file=sys.stdout)
log = logging.getLogger("lvsmail.director")
log.debug("debug line")
log.info("director: reloaded test: 2 services")
log.warning("director: repaired drift with 1 operations")
log.error("director: reload rejected, running table kept:\\n/etc/lvsmail/cluster.yaml:3: services: bad\\n"
          "/etc/lvsmail/cluster.yaml:7: vips: bad")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("director: crashed")
print("plain stderr line", file=sys.stderr)
"""


def _run(args, tmp_path, *, journal=True, env_stream=None):
    """Run ``python args`` with standard error in a file, named by JOURNAL_STREAM when ``journal``."""
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("JOURNAL_STREAM", None)
        if journal:
            env["JOURNAL_STREAM"] = env_stream or f"{st.st_dev}:{st.st_ino}"
        done = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, stderr=f, text=True, env=env,
                              cwd=tmp_path, timeout=60)
    return done, err.read_text()


def test_under_the_journal_every_line_has_its_priority_and_no_timestamp(tmp_path):
    done, err = _run(["-c", LOGS], tmp_path)
    assert done.stdout.strip() == "journal"
    lines = err.splitlines()
    assert lines[0] == "<7>lvsmail.director DEBUG debug line"
    assert lines[1] == "<6>lvsmail.director INFO director: reloaded test: 2 services"
    assert lines[2] == "<4>lvsmail.director WARNING director: repaired drift with 1 operations"
    # A multi-line error keeps its priority on every line: `journalctl -p err` shows the file:line problems.
    assert lines[3:6] == ["<3>lvsmail.director ERROR director: reload rejected, running table kept:",
                          "<3>/etc/lvsmail/cluster.yaml:3: services: bad",
                          "<3>/etc/lvsmail/cluster.yaml:7: vips: bad"]
    traceback = [line for line in lines if "boom" in line or "Traceback" in line]
    assert traceback and all(line.startswith("<3>") for line in traceback)
    assert lines[-1] == "<3>plain stderr line"  # the rest of stderr is a command's error output
    assert all(re.match(r"<[0-7]>", line) for line in lines)
    assert not TIMESTAMP.search(err)


def test_on_a_terminal_or_a_redirected_stderr_the_format_is_unchanged(tmp_path):
    # JOURNAL_STREAM inherited from a unit, but stderr redirected to a file: not the journal.
    done, err = _run(["-c", LOGS], tmp_path, env_stream="1:2")
    assert done.stdout.strip() == "terminal"
    first = err.splitlines()[0]
    assert TIMESTAMP.match(first) and first.endswith(" lvsmail.director DEBUG debug line")
    assert not re.search(r"^<\d>", err, re.M)


def test_config_validate_under_systemd_files_each_problem_at_err(tmp_path):
    """ExecReload's validation: a refused reload shows its file:line errors in `journalctl -p err`."""
    bad = tmp_path / "cluster.yaml"
    bad.write_text("cluster: t\nvips: [192.0.2.1]\nservices:\n  - name: smtp\n    port: 99999\n    bogus: 1\n")
    done, err = _run(["-m", "lvsmail", "config", "validate", str(bad)], tmp_path)
    assert done.returncode == 2
    lines = err.splitlines()
    assert len(lines) >= 2 and all(line.startswith(f"<3>{bad}:") for line in lines), lines


def test_director_start_refusing_a_bad_file_says_so_at_err(tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("cluster: [\n")
    done, err = _run(["-m", "lvsmail", "director", "start", "-c", str(bad), "--state-dir", str(tmp_path / "s")],
                     tmp_path)
    assert done.returncode == 2
    assert err.strip() and all(line.startswith("<3>") for line in err.splitlines())


def test_director_start_logs_at_info_without_v_and_hands_the_notifier_over(monkeypatch, tmp_path):
    """A daemon's reloads and repairs must reach the journal at info even when the unit passes no -v."""
    from click.testing import CliRunner

    import lvsmail.director.daemon as daemon
    from lvsmail.cli import cli

    seen = {}

    async def fake_serve(director):
        seen["level"] = logging.getLogger().level
        seen["notifier"] = director.notifier
        seen["env"] = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}

    monkeypatch.setattr(daemon, "serve", fake_serve)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    (tmp_path / "c.yaml").write_text("cluster: t\nvips: [192.0.2.1]\nservices: []\n")
    result = CliRunner().invoke(cli, ["director", "start", "-c", str(tmp_path / "c.yaml"),
                                      "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert seen["level"] == logging.INFO
    assert seen["notifier"].address == str(tmp_path / "notify") and seen["notifier"].watchdog_interval == 15.0
    assert seen["env"] == {"NOTIFY_SOCKET": None, "WATCHDOG_USEC": None}  # children cannot notify for us


@pytest.mark.parametrize("level, prio", [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                                         (logging.INFO, 6), (logging.DEBUG, 7), (5, 7)])
def test_priorities_are_syslogs(level, prio):
    assert priority(level) == prio


def test_formatter_and_stream_in_process(tmp_path):
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "one\ntwo", None, None)
    assert JournalFormatter("%(message)s").format(record) == "<4>one\n<4>two"

    class Sink:
        text = ""

        def write(self, s):
            Sink.text += s

    stream = PriorityStream(Sink())
    stream.write("<6>already\n")
    stream.write("half ")
    stream.write("a line\nnext\n")
    assert Sink.text == "<6>already\n<3>half a line\n<3>next\n"


def test_journal_stream_matches_device_and_inode_only(tmp_path):
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())
        assert not journal_stream({"JOURNAL_STREAM": "garbage"}, f.fileno())
        assert not journal_stream({}, f.fileno())
