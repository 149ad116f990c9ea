"""Test-suite wiring: markers by directory, and the guard that kernel tests really ran.

Tests are organised by what they need: ``tests/unit`` nothing, ``tests/netns``
root and network namespaces on this machine, ``tests/kernel`` a kernel with IPVS
and IPIP (the lab VM). A test that cannot run skips with the reason; but a CI run
whose kernel tests all skipped would look green while proving nothing, so with
``LVSMAIL_REQUIRE_LAB=1`` any skipped kernel test makes the session fail.
"""

from __future__ import annotations

import os

import pytest

_KERNEL_DIR = os.path.join("tests", "kernel")
_NETNS_DIR = os.path.join("tests", "netns")


def _under(nodeid_or_path: str, directory: str) -> bool:
    """Whether a node id or path lies under a test directory."""
    return nodeid_or_path.replace(os.sep, "/").startswith(directory.replace(os.sep, "/") + "/") or \
        f"/{directory}/".replace(os.sep, "/") in nodeid_or_path.replace(os.sep, "/")


def require_lab() -> bool:
    """Whether skipped kernel tests must fail the run (CI sets LVSMAIL_REQUIRE_LAB=1)."""
    return os.environ.get("LVSMAIL_REQUIRE_LAB", "") == "1"


def pytest_collection_modifyitems(config, items) -> None:
    """Mark tests by directory so ``-m 'not kernel'`` and friends work."""
    for item in items:
        if _under(item.nodeid, _KERNEL_DIR):
            item.add_marker(pytest.mark.kernel)
        elif _under(item.nodeid, _NETNS_DIR):
            item.add_marker(pytest.mark.netns)


def _record_skip(config, report) -> None:
    """Remember a skipped kernel test (or a kernel module skipped whole at collection)."""
    if report.skipped and _under(report.nodeid, _KERNEL_DIR):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        config.stash.setdefault(_SKIPS, []).append((report.nodeid, reason))


_SKIPS = pytest.StashKey[list]()


def pytest_runtest_logreport(report) -> None:
    """Collect skips of kernel tests (the hook gets no config: use the one kept at configure)."""
    if _CONFIG:
        _record_skip(_CONFIG[0], report)


def pytest_collectreport(report) -> None:
    """Collect kernel modules skipped at collection time."""
    if _CONFIG:
        _record_skip(_CONFIG[0], report)


_CONFIG: list = []


def pytest_configure(config) -> None:
    """Keep the config for the report hooks."""
    _CONFIG[:] = [config]


def pytest_sessionfinish(session, exitstatus) -> None:
    """With LVSMAIL_REQUIRE_LAB=1, a skipped kernel test fails the session."""
    skips = session.config.stash.get(_SKIPS, [])
    if require_lab() and skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say loudly that kernel tests were skipped, and whether that fails the run."""
    skips = config.stash.get(_SKIPS, [])
    if not skips:
        return
    verdict = "FAILS this run (LVSMAIL_REQUIRE_LAB=1)" if require_lab() else \
        "run them in the lab: deploy/lab/run python3 -m pytest tests/kernel"
    terminalreporter.section("kernel tests skipped", sep="=", red=require_lab(), yellow=not require_lab())
    for nodeid, reason in skips[:10]:
        terminalreporter.line(f"{nodeid}: {reason}")
    if len(skips) > 10:
        terminalreporter.line(f"... and {len(skips) - 10} more")
    terminalreporter.line(f"{len(skips)} kernel test(s) skipped: {verdict}")
