"""The command line as an installed tool: one version, the installed cluster file by default, no lab in production."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import lvsmail
from lvsmail.cli import cli
from lvsmail.commands import options

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "directors" / "examples" / "clustermail.yaml"


def test_version_is_the_package_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"lvsmail, version {lvsmail.__version__}"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Point the installed cluster file (/etc/lvsmail/cluster.yaml) at a file of this test."""
    path = tmp_path / "cluster.yaml"
    monkeypatch.setattr(options, "DEFAULT_CLUSTER_FILE", str(path))
    return path


def test_config_validate_and_director_apply_read_the_installed_file_without_c(installed):
    installed.write_text(EXAMPLE.read_text())
    ok = CliRunner().invoke(cli, ["config", "validate"])
    assert ok.exit_code == 0 and ok.output.startswith(f"{installed}: ok,")
    installed.write_text("cluster: [\n")
    bad = CliRunner().invoke(cli, ["director", "apply", "--dry-run"])
    assert bad.exit_code == 2 and f"{installed}:2:" in bad.output


def test_every_command_that_takes_c_names_the_installed_file_in_its_help():
    for args in (["director", "start"], ["director", "apply"], ["director", "status"], ["realserver", "join"],
                 ["realserver", "verify"], ["realserver", "drain"], ["dashboard"], ["availability"]):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0
        assert "/etc/lvsmail/cluster.yaml" in result.output, args


def test_optional_c_takes_the_installed_file_only_when_it_exists(installed, tmp_path):
    no_file = CliRunner().invoke(cli, ["availability"])
    assert no_file.exit_code == 0 and "No cluster file given" in no_file.output
    installed.write_text(EXAMPLE.read_text().split("\navailability:")[0] + "\n")
    # The installed file without an availability: section is not an error when nobody asked for it...
    default = CliRunner().invoke(cli, ["availability", "--state-dir", str(tmp_path)])
    assert default.exit_code == 0, default.output
    assert f"{installed} has no availability: section" in default.output
    # ... but it is when named with -c.
    named = CliRunner().invoke(cli, ["availability", "-c", str(installed), "--state-dir", str(tmp_path)])
    assert named.exit_code == 2


def test_state_dir_defaults_to_the_runtime_directory_everywhere():
    for args in (["director", "start"], ["director", "status"], ["config", "check"], ["availability"],
                 ["dashboard"], ["realserver", "enable"]):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert "/run/lvsmail" in result.output, args


def _without_lab(tmp_path) -> Path:
    """A copy of the package as the Debian package installs it: no lvsmail/lab, and so no lab command group."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "lvsmail", site / "lvsmail", ignore=shutil.ignore_patterns("__pycache__", "lab"))
    assert not (site / "lvsmail" / "lab").exists()
    return site


def _run(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=site.parent,
                          timeout=120)


def test_without_the_lab_the_cli_works_and_has_no_lab_group(tmp_path):
    site = _without_lab(tmp_path)
    help_ = _run(site, "-m", "lvsmail", "--help")
    assert help_.returncode == 0, help_.stderr
    groups = {line.split()[0] for line in help_.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert groups == {"availability", "config", "dashboard", "director", "realserver"}
    assert _run(site, "-m", "lvsmail", "lab", "--help").returncode == 2  # "No such command"
    valid = _run(site, "-m", "lvsmail", "config", "validate", str(EXAMPLE))
    assert valid.returncode == 0 and "ok," in valid.stdout, valid.stderr
    for group in ("director", "realserver", "config", "dashboard", "availability"):
        assert _run(site, "-m", "lvsmail", group, "--help").returncode == 0, group
    # No module outside the lab imports it: every one of them loads from the copy.
    probe = _run(site, "-c", "import importlib, pkgutil, sys, lvsmail\n"
                             "names = [m.name for m in pkgutil.walk_packages(lvsmail.__path__, 'lvsmail.')\n"
                             "         if m.name != 'lvsmail.__main__']\n"
                             "for name in names:\n"
                             "    importlib.import_module(name)\n"
                             "assert not any(m.startswith('lvsmail.lab') for m in sys.modules)\n"
                             "print(len(names))")
    assert probe.returncode == 0, probe.stderr
    assert int(probe.stdout) > 40


def test_with_the_lab_installed_the_group_is_there():
    from lvsmail.cli import lab_installed

    assert lab_installed()
    assert "lab" in cli.commands
