"""``lvsmail realserver drain|enable|weight``: act on a real server from the director, through its local API.

These are the operator's override of the file's weight (see
lvsmail.console.overrides): they survive a director restart and end with
``enable``. ``--wait`` follows the kernel's active connection count of the
server until it reaches zero, which is when a drained server can be stopped
without cutting a mail transaction.
"""

from __future__ import annotations

import json
import sys
import time

import click

from lvsmail.commands.local_api import api_options, connect, refused
from lvsmail.commands.options import EXIT_PENDING, json_output

#: Seconds between two looks at the connection counts while waiting.
WAIT_POLL = 0.5

#: A real server by address, address:port ([v6]:port) or name, as the cluster file lists it.
target_argument = click.argument("target", metavar="ADDRESS")
service_option = click.option("--service", help="Only in this service (by name); default: every service it serves.")
wait_options = [
    click.option("--wait", is_flag=True, help="Return when its active connections reach 0 (exit 1 on timeout)."),
    click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0),
                 help="Seconds --wait waits."),
]


def _with(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


def _describe(s: dict) -> str:
    hp = f"[{s['address']}]:{s['port']}" if ":" in s["address"] else f"{s['address']}:{s['port']}"
    if "health" not in s:
        return f"{s['service']} {hp}"
    eff = "-" if s["effective_weight"] is None else s["effective_weight"]
    return (f"{s['service']} {hp}: {s['health']}, weight {s['configured_weight']} configured / {eff} in kernel,"
            f" {s['active']} active, {s['inactive']} inactive")


def _run(request: str, target: str, service: str | None, as_json: bool, wait: bool, timeout: float,
         config_path, socket_path, state_dir, **args) -> None:
    client = connect(config_path, socket_path, state_dir)
    with client:
        reply = client.call(request, target=target, service=service, **args)
        servers = reply["servers"]
        if not as_json:
            for s in servers:
                click.echo(_describe(s))
        if not wait:
            if as_json:
                click.echo(json.dumps(servers, indent=2))
            return
        keys = {(s["service"], s["address"], s["port"]) for s in servers}
        end = time.monotonic() + timeout
        while True:
            status = client.call("status", events=0)["status"]
            rows = [dict(r, service=svc["name"]) for svc in status["services"] for r in svc["realservers"]
                    if (svc["name"], r["address"], r["port"]) in keys]
            active = sum(r["active"] for r in rows)
            if active == 0:
                if as_json:
                    click.echo(json.dumps(rows, indent=2))
                else:
                    click.echo("no active connections left")
                return
            if time.monotonic() >= end:
                if as_json:
                    click.echo(json.dumps(rows, indent=2))
                click.echo(f"lvsmail: {active} active connections left after {timeout:g} s", err=True)
                sys.exit(EXIT_PENDING)
            time.sleep(min(WAIT_POLL, max(0.0, end - time.monotonic())))


@click.command()
@target_argument
@service_option
@_with(wait_options)
@json_output
@api_options
@refused
def drain(target, service, wait, timeout, as_json, config_path, socket_path, state_dir) -> None:
    """(On the director) weight 0 for a real server: no new connections, established ones finish.

    ADDRESS is an address, address:port ([v6]:port) or a real server's name.
    The drain is kept across director restarts until ``enable``.
    """
    _run("drain", target, service, as_json, wait, timeout, config_path, socket_path, state_dir)


@click.command()
@target_argument
@service_option
@json_output
@api_options
@refused
def enable(target, service, as_json, config_path, socket_path, state_dir) -> None:
    """(On the director) end a drain or weight override: the file's weight applies again."""
    _run("enable", target, service, as_json, False, 0.0, config_path, socket_path, state_dir)


@click.command()
@target_argument
@click.argument("weight", type=click.IntRange(0, 65535))
@service_option
@_with(wait_options)
@json_output
@api_options
@refused
def weight(target, weight, service, wait, timeout, as_json, config_path, socket_path, state_dir) -> None:
    """(On the director) set a real server's weight until ``enable`` (--wait as for drain)."""
    _run("weight", target, service, as_json, wait, timeout, config_path, socket_path, state_dir, weight=weight)


#: The commands this module adds to ``lvsmail realserver``.
COMMANDS = (drain, enable, weight)
