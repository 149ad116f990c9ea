"""``lvsmail dashboard``: a live view of a running director, with keys to drain, enable and re-check."""

from __future__ import annotations

import sys

import click

from lvsmail.commands.local_api import api_options, connect
from lvsmail.commands.options import EXIT_CONFIG

#: Seconds between two status requests (the issue asks for at least one refresh a second).
REFRESH = 1.0


@click.command()
@api_options
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and bug reports).")
@click.option("--service", "service_filter", default="", help="Show only services whose name contains this.")
@click.option("--interval", default=REFRESH, show_default=True, type=click.FloatRange(min=0.1, max=REFRESH),
              help="Seconds between refreshes.")
def dashboard(config_path, socket_path, state_dir, once, service_filter, interval) -> None:
    """Live view of the director: services, real servers' health, weights, connections, VRRP, events.

    \b
    Keys: up/down (or j/k) select a real server, d drain, e enable, r re-check
    (each asks y/n), / type a service filter (Enter applies, Esc clears),
    f cycle the filter through the services, q quit. Without a terminal on
    stdout, prints plain text frames (one with --once).
    """
    from lvsmail.console.dashboard.app import Dashboard

    client = connect(config_path, socket_path, state_dir)
    app = Dashboard(client, service_filter=service_filter, interval=interval)
    try:
        if once:
            app.print_once(plain=not sys.stdout.isatty())
        elif not sys.stdout.isatty() or not sys.stdin.isatty():
            app.run_plain()
        else:
            app.run_live()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    if app.fatal:
        click.echo(f"lvsmail: {app.fatal}", err=True)
        sys.exit(EXIT_CONFIG)
