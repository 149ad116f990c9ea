"""The ``lvsmail`` command: one console script, grouped by role."""

import logging
from pathlib import Path

import click

from lvsmail import __version__
from lvsmail.commands.availability import availability
from lvsmail.commands.config import config
from lvsmail.commands.dashboard import dashboard
from lvsmail.commands.director import director
from lvsmail.commands.realserver import realserver


@click.group()
@click.version_option(__version__, prog_name="lvsmail")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Run a mail cluster behind Linux Virtual Server."""
    from lvsmail.systemd import configure_logging

    # On a terminal: timestamped lines; under systemd: the journal's priorities, no timestamp of ours.
    configure_logging(logging.WARNING - 10 * min(verbose, 2))


cli.add_command(director)
cli.add_command(config)
cli.add_command(realserver)
cli.add_command(availability)
cli.add_command(dashboard)
# drain/enable/weight run on the director through its local API; join/leave/verify on the real server.
from lvsmail.commands.realserver_ops import COMMANDS as _REALSERVER_OPS  # noqa: E402

for _command in _REALSERVER_OPS:
    realserver.add_command(_command)


def lab_installed() -> bool:
    """True when the lab's code is installed (a source checkout, pip's ``[lab]``), not on a production host."""
    # Looked for beside this module rather than with importlib's find_spec: an editable install's finder
    # would resolve ``lvsmail.lab`` from its own checkout even when this copy of lvsmail has no lab.
    return (Path(__file__).parent / "lab" / "cli.py").is_file()


# The Debian package leaves out lvsmail/lab and its command group: a director or a real server
# gets no VM runner, chaos tool or demo cluster. Without this test, `lvsmail --help` would fail there
# with an ImportError; with it, the lab group simply does not exist on production hosts.
if lab_installed():
    from lvsmail.lab.cli import lab  # noqa: E402

    cli.add_command(lab)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lvsmail")
