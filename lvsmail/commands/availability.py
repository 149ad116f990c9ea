"""``lvsmail availability``: the seed's availability model with our measured failover times."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from lvsmail.commands.options import EXIT_CONFIG, cluster_file_if_installed, json_output, state_dir


@click.command()
@cluster_file_if_installed("Cluster file with an availability: section (without one, only the seed's figures).")
@state_dir("Where the directors record the failovers they measured.")
@click.option("--mtfo-directors", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Director takeover time to use instead of the recorded median.")
@click.option("--mtfo-realservers", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Real-server removal time to use instead of the recorded median.")
@json_output
def availability(config_path: str | None, state_dir: str, mtfo_directors: float | None,
                 mtfo_realservers: float | None, as_json: bool) -> None:
    """Availability of each layer and of the cluster, beside the seed deployment's figures.

    Failover times are the medians of what the directors recorded (director
    takeovers, real-server removals), unless --mtfo-* overrides them; node
    availability, MTBF and the layers come from the cluster file.  Exit 2 when
    the file is invalid or a layer has no failover time.
    """
    import json

    from lvsmail.console import availability as model

    theirs = model.seed()
    ours, note = None, "No cluster file given (-c): the seed's figures only."
    # The installed file, taken by default, may have no availability: section: then only the seed's figures.
    given = click.get_current_context().get_parameter_source("config_path") is not ParameterSource.DEFAULT
    if config_path:
        ours, note = _ours(config_path, state_dir, {"directors": mtfo_directors, "realservers": mtfo_realservers},
                           required=given)
    if as_json:
        click.echo(json.dumps({"ours": model.as_json(ours) if ours else None, "seed": model.as_json(theirs),
                               "note": note}, indent=2))
    else:
        click.echo(model.as_text(ours, theirs, note), nl=False)


def _ours(config_path: str, state_dir: str, overrides: dict[str, float | None], required: bool = True):
    """(Result, note) for the cluster file, or exit 2 with the reason; (None, note) when a file that was
    not asked for (``required`` False) has no availability: section."""
    from lvsmail.config import ConfigError, load_cluster
    from lvsmail.console import availability as model
    from lvsmail.console.outages import outages_path, read_outages

    try:
        spec = load_cluster(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    if spec.availability is None and not required:
        return None, f"{config_path} has no availability: section: the seed's figures only."
    if spec.availability is None:
        click.echo(f"{config_path}: no availability: section (node_availability, mtbf_hours, layers)", err=True)
        sys.exit(EXIT_CONFIG)
    path = outages_path(state_dir, config_path)
    try:
        log = read_outages(path)
    except OSError as exc:
        click.echo(f"lvsmail: cannot read {path}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if log.unreadable:
        click.echo(f"{path}: skipped unreadable lines {', '.join(map(str, log.unreadable))}", err=True)
    medians = {}
    for layer_name, kind in model.MEASURED_LAYERS.items():
        median = log.median(kind)
        if median is not None:
            medians[layer_name] = (median, len(log.of(kind)))
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        result = model.evaluate(model.our_inputs(spec.availability, medians, given))
    except model.MissingInput as exc:
        click.echo(f"{config_path}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    note = f"Recorded failovers: {path} ({len(log.outages)} records)."
    return result, note
