"""How commands find and reach a running director's local API (options defined once)."""

from __future__ import annotations

import functools
import sys

import click

from lvsmail.commands.options import EXIT_CONFIG, cluster_file_if_installed, state_dir


def api_options(f):
    """``-c FILE`` / ``--socket PATH`` / ``--state-dir``: which director to talk to."""
    f = state_dir()(f)
    f = click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
                     help="The director's API socket (default: from -c, or the only one in --state-dir).")(f)
    f = cluster_file_if_installed("Cluster file of the director to talk to.")(f)
    return f


def locate(config_path: str | None, socket_path: str | None, state_dir: str):
    """The socket path to use, or None when no director answers there (APIError: ambiguous)."""
    from pathlib import Path

    from lvsmail.console.client import find_socket

    if socket_path:
        return Path(socket_path) if Path(socket_path).exists() else None
    return find_socket(state_dir, config_path)


def connect(config_path: str | None, socket_path: str | None, state_dir: str):
    """A connected Client, or exit 2 saying why no director could be reached."""
    from lvsmail.console.client import APIError, Client

    try:
        path = locate(config_path, socket_path, state_dir)
        if path is None:
            where = socket_path or state_dir
            raise APIError(f"no running director answers in {where} (start one with `lvsmail director start`)")
        return Client(path)
    except APIError as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def refused(f):
    """Turn the director's refusal (APIError) into a message and exit 2."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from lvsmail.console.client import APIError

        try:
            return f(*args, **kwargs)
        except APIError as exc:
            click.echo(f"lvsmail: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
    return wrapper


def status_from_api(as_json: bool, config_path: str | None, state_dir: str) -> bool:
    """Print the running director's status from its API; False (and a note on stderr) when none answers.

    The output keeps the layout and JSON fields of the kernel-and-files
    reading (scripts read both alike) and adds what only the running director
    knows: JSON gets a ``director`` object (the API's snapshot: badges,
    operator overrides, rates, VRRP peers, events), text a section with the
    overrides and the last events. Without a director the fallback still
    shows a table left in place.
    """
    import json

    from lvsmail.console.client import APIError, Client
    from lvsmail.console.snapshot import status_text

    try:
        path = locate(config_path, None, state_dir)
        if path is not None:
            with Client(path) as client:
                # With -c, only this file's services, as without a director.
                reply = client.call("status", table=True, mine=bool(config_path))
            snap, table = reply["status"], reply["table"]
            if as_json:
                click.echo(json.dumps(dict(table["json"], director=snap), indent=2))
            else:
                click.echo(table["text"])
                click.echo(status_text(snap, extras_only=True))
            return True
        why = f"no director answers in {state_dir}"
    except (APIError, OSError, ValueError) as exc:
        why = str(exc)
    except KeyError as exc:
        why = f"the director's status lacks {exc} (a director of another lvsmail version?)"
    if not as_json:  # JSON stays parseable as before (test runners mix stderr in); it has no "director" object
        click.echo(f"lvsmail: {why}; showing the kernel's table and the health files directors published", err=True)
    return False
