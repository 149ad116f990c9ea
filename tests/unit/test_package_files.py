"""The Debian package's sources agree with the program: one version, honest Depends, files that exist.

``deploy/package`` builds the package and checks what it holds; these tests
keep its inputs true without building: debian/changelog carries the version
of ``lvsmail.__version__``, every lower bound of setup.cfg reaches Depends,
every file debian/lvsmail.install names exists, the example cluster file that
becomes /etc/lvsmail/cluster.yaml is valid and is the seed's table, and the
licence texts agree with the metadata.
"""

from __future__ import annotations

import configparser
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

import lvsmail

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "directors", "examples", "cluster.yaml")


def _read(*parts: str) -> str:
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return f.read()


def _requirements() -> dict[str, str]:
    """setup.cfg's install_requires: distribution name (lower case) -> lower bound."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    reqs = {}
    for line in cfg["options"]["install_requires"].split("\n"):
        if line.strip():
            name, _, bound = line.strip().partition(">=")
            reqs[name.strip().lower()] = bound.strip()
    return reqs


def test_changelog_carries_the_package_version():
    first = _read("debian", "changelog").splitlines()[0]
    m = re.match(r"lvsmail \(([^)-]+)-(\d+)\) \S+; urgency=\w+$", first)
    assert m, f"debian/changelog's first line is not an entry for lvsmail: {first!r}"
    assert m.group(1) == lvsmail.__version__, "add a debian/changelog entry for the new version (dch -v VERSION-1)"


def test_deploy_package_refuses_a_changelog_of_another_version(tmp_path):
    if not shutil.which("dpkg-parsechangelog"):
        pytest.skip("needs dpkg-dev (dpkg-parsechangelog)")
    tree = tmp_path / "src"
    for part in ("deploy/package", "lvsmail/__init__.py", "debian/changelog"):
        (tree / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(REPO, part), tree / part)
    changelog = tree / "debian" / "changelog"
    changelog.write_text(changelog.read_text().replace(f"({lvsmail.__version__}-", "(9.9.9-", 1))
    done = subprocess.run([str(tree / "deploy" / "package")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"debian/changelog is at 9.9.9-1 but lvsmail/__init__.py says {lvsmail.__version__}" in done.stderr
    assert not (tree / "dist").exists()


def test_every_lower_bound_of_setup_cfg_reaches_depends():
    # dh_python3 keeps a requirement's version only for names listed in py3dist-overrides with PEP386.
    overrides = {}
    for line in _read("debian", "py3dist-overrides").splitlines():
        if line.strip() and not line.startswith("#"):
            name, package, flags = re.match(r"(\S+)\s+(\S+);\s*(.*)", line).groups()
            overrides[name.lower().replace("_", "-")] = (package, flags)
    for name in _requirements():
        key = name.replace("_", "-")
        assert key in overrides, f"{name} is in install_requires but not in debian/py3dist-overrides"
        assert "PEP386" in overrides[key][1], f"{name}: without PEP386 its lower bound is dropped from Depends"


def test_control_keeps_what_debian_12_lacks_out_of_depends():
    control = _read("debian", "control")
    depends = re.search(r"^Depends:(.*?)^\S", control, re.S | re.M).group(1)
    for missing in ("imapclient", "uvloop", "scapy", "virtme", "aiosmtpd", "pytest"):
        assert missing not in depends, f"{missing} must not be a hard dependency of production hosts"
    assert "kmod" in depends  # the director unit and the IPVS netlink code run modprobe


def test_every_installed_source_exists():
    for listing in ("lvsmail.install", "lvsmail.docs"):
        for line in _read("debian", listing).splitlines():
            source = line.split()[0]
            if source.startswith("debian/generated/"):
                continue  # made by debian/rules during the build
            assert glob.glob(os.path.join(REPO, source)), f"debian/{listing} names {source}, which does not exist"


def test_example_cluster_file_validates():
    done = subprocess.run([sys.executable, "-m", "lvsmail", "config", "validate", EXAMPLE], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok, 2 services, 4 real servers" in done.stdout


def test_example_cluster_file_is_the_seed_table():
    with open(EXAMPLE, encoding="utf-8") as f:
        tree = yaml.safe_load(f)
    assert tree["vips"] == ["192.0.2.33"]
    services = {s["name"]: s for s in tree["services"]}
    assert {name: s["port"] for name, s in services.items()} == {"smtp": 25, "http": 80}
    seed_servers = ["198.51.100.20", "198.51.100.32", "198.51.100.35", "198.51.100.36"]
    for s in services.values():
        assert s["vip"] == "192.0.2.33" and s["scheduler"] == "wlc" and s["forwarding"] == "tun"
        assert s["realservers"] == seed_servers
        assert s["check"]["type"] == s["name"]
    assert services["http"]["check"]["path"] == "/solicitud.html"


def test_example_cluster_file_says_how_to_start():
    text = _read("directors", "examples", "cluster.yaml")
    assert "lvsmail config validate /etc/lvsmail/cluster.yaml" in text
    assert "systemctl enable --now lvsmail-director" in text


def test_license_is_the_gpl_2_text_and_copyright_says_or_later():
    text = _read("LICENSE")
    assert text.split()[:7] == ["GNU", "GENERAL", "PUBLIC", "LICENSE", "Version", "2,", "June"]
    if os.path.exists("/usr/share/common-licenses/GPL-2"):
        with open("/usr/share/common-licenses/GPL-2", encoding="utf-8") as f:
            assert text == f.read()
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    assert cfg["metadata"]["license"] == "GPL-2.0-or-later"
    copyright_ = _read("debian", "copyright")
    assert "Files: *\nCopyright: " in copyright_ and "License: GPL-2.0+\n" in copyright_
    assert "any later version" in copyright_


def test_purge_removes_the_configuration_and_state_and_remove_keeps_them():
    script = _read("debian", "lvsmail.postrm")
    m = re.search(r'if \[ "\$1" = "purge" \]; then\n(.*?)\nfi', script, re.S)
    assert m and m.group(1).strip() == "rm -rf /etc/lvsmail /var/lib/lvsmail"
    assert script.count("rm -") == 1  # nothing is removed on a plain remove
    assert "#DEBHELPER#" in script


def test_units_are_installed_disabled():
    rules = _read("debian", "rules")
    calls = re.findall(r"^\tdh_installsystemd (.*)$", rules, re.M)
    assert sorted(calls) == ["--no-enable --no-start --no-stop-on-upgrade lvsmail-realserver.service",
                             "--no-enable lvsmail-director.service"]
