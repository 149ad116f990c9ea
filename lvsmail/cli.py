"""The ``lvsmail`` command: one console script, grouped by role."""

import logging

import click

from lvsmail import __version__
from lvsmail.commands.availability import availability
from lvsmail.commands.config import config
from lvsmail.commands.dashboard import dashboard
from lvsmail.commands.director import director
from lvsmail.commands.lab import lab
from lvsmail.commands.realserver import realserver


@click.group()
@click.version_option(__version__, prog_name="lvsmail")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Run a mail cluster behind Linux Virtual Server."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


cli.add_command(director)
cli.add_command(config)
cli.add_command(lab)
cli.add_command(realserver)
cli.add_command(availability)
cli.add_command(dashboard)
# drain/enable/weight run on the director through its local API; join/leave/verify on the real server.
from lvsmail.commands.realserver_ops import COMMANDS as _REALSERVER_OPS  # noqa: E402

for _command in _REALSERVER_OPS:
    realserver.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lvsmail")
