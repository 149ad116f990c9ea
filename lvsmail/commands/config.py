"""``lvsmail config``: check a cluster file, or convert an ldirectord.cf into one."""

from __future__ import annotations

from pathlib import Path

import click

from lvsmail.commands.options import EXIT_CONFIG

# The loader and importer are imported inside each command: every ``lvsmail`` start
# would otherwise pay for them, and in the emulated lab that costs seconds.


@click.group(name="config")
def config() -> None:
    """Validate cluster files and import ldirectord configurations."""


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check FILE and report every problem at once (exit 2 if there is any)."""
    from lvsmail.config import ConfigError, load_cluster

    try:
        spec = load_cluster(file)
    except ConfigError as exc:
        _fail(exc)
    hosts = {rs.address for service in spec.services for rs in service.realservers}
    click.echo(f"{file}: ok, {len(spec.services)} services, {len(hosts)} real servers")


@config.command("import-ldirectord")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write the cluster file here instead of standard output.")
@click.option("--name", help="Cluster name (default: the file name without its extension).")
def import_ldirectord_cmd(file: str, output: str | None, name: str | None) -> None:
    """Print the cluster file equivalent to the ldirectord.cf FILE.

    Directives lvsmail cannot express are listed on standard error with their
    line; the conversion still succeeds (exit 0).  Exit 2 if FILE is broken.
    """
    from lvsmail.config import ConfigError, dump_cluster
    from lvsmail.config.ldirectord import import_ldirectord

    try:
        result = import_ldirectord(Path(file), name=name)
    except ConfigError as exc:
        _fail(exc)
    for warning in result.warnings:
        click.echo(warning, err=True)
    text = f"# Imported from {file} by lvsmail config import-ldirectord.\n" + dump_cluster(result.spec)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


def _fail(exc) -> None:
    """Print every problem on standard error and exit with the config-error code."""
    for problem in exc.problems:
        click.echo(str(problem), err=True)
    raise SystemExit(EXIT_CONFIG)
