"""Fixtures shared by the unit tests.

The unit tests run on two sets of libraries: the virtual environment's current
releases, and Debian 12's own packages (the lower bounds setup.cfg declares).
Where those differ in a way a test sees, the difference is bridged here, once.
"""

from __future__ import annotations

import functools
import inspect

import pytest
from click.testing import CliRunner


def separate_streams_runner() -> CliRunner:
    """A CliRunner whose result has stdout and stderr apart, on click 8.1 and on 8.2+.

    click 8.1 (Debian 12) mixes stderr into stdout unless ``mix_stderr=False`` and then
    raises on ``result.stderr``; click 8.2 removed that argument and always keeps them apart.
    """
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


@pytest.fixture
def cli_runner() -> CliRunner:
    """A CliRunner that keeps a command's stdout and stderr apart (see ``separate_streams_runner``)."""
    return separate_streams_runner()


@pytest.fixture
def running_director(tmp_path):
    """``support.director.running`` with its state in ``tmp_path/state``: ``async with running_director(path) as d``."""
    from support.director import running

    return functools.partial(running, state_dir=tmp_path / "state")
