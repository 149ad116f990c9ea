"""``lvsmail director …``: run the director, apply a file once, show the table."""

from __future__ import annotations

import sys

import click

from lvsmail.commands.options import (
    EXIT_CONFIG,
    EXIT_PENDING,
    cluster_file,
    cluster_file_if_installed,
    dry_run,
    json_output,
    state_dir,
)


@click.group()
def director() -> None:
    """Program and watch the kernel's IPVS table (run on the directors)."""


@director.command()
@cluster_file
@click.option("--repair-interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between reads of the kernel table to repair drift.")
@click.option("--flush-on-exit", is_flag=True, help="Remove this file's services on SIGTERM (default: leave them).")
@state_dir("Where the director keeps its API socket, the services it owns and its health file.")
@click.option("--check-workers", type=click.IntRange(min=0), default=None,
              help="Extra processes that run health checks (0: all in the director; default: one when "
                   "there are 100 or more targets and 2 or more CPUs).")
def start(config_path: str, repair_interval: float, flush_on_exit: bool, state_dir: str,
          check_workers: int | None) -> None:
    """Run the director in the foreground (SIGHUP reloads, SIGTERM exits)."""
    import asyncio
    import logging

    from lvsmail.config import ConfigError
    from lvsmail.director.daemon import Director, serve
    from lvsmail.ipvs.netlink import IPVSUnavailable, NetlinkIPVS
    from lvsmail.systemd import Notifier

    if logging.getLogger().level > logging.INFO:
        # A daemon reports what it does (reloads, repairs, transitions) at info, in the journal too, without -v.
        logging.getLogger().setLevel(logging.INFO)
    # Read once, then out of the environment: checks and hooks must not speak to systemd for the director.
    notifier = Notifier.from_environment(unset=True)
    d = Director(config_path, NetlinkIPVS(), repair_interval=repair_interval, flush_on_exit=flush_on_exit,
                 state_dir=state_dir, engine_options={"workers": check_workers}, notifier=notifier)
    try:
        asyncio.run(serve(d))
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except IPVSUnavailable as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


#: Seconds between two looks at the director's reload record while ``reload`` waits.
RELOAD_POLL = 0.05


@director.command()
@cluster_file
@state_dir("Where the running director keeps its API socket and its reload record.")
@click.option("--pid", type=click.IntRange(min=1),
              help="Send SIGHUP to this process instead of asking through the local API (systemd's $MAINPID).")
@click.option("--timeout", default=80.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the director to finish the reload.")
def reload(config_path: str, state_dir: str, pid: int | None, timeout: float) -> None:
    """Validate the file, have the running director reload it, and wait until it has.

    A file with problems is refused before the director is asked (every
    problem listed, exit 2); the running table is kept. Exit 0 once the
    director reports the new file in force, 2 if it refused it, 1 if it did
    not answer within --timeout. This is the unit's ExecReload: `systemctl
    reload` returns when the reload is done, and fails when it was refused.
    """
    import json
    import os
    import signal
    import time

    from lvsmail.config import ConfigError, load_cluster
    from lvsmail.statefiles import StateDir

    try:
        spec = load_cluster(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    record = StateDir.of(state_dir, config_path).reload
    asked = time.monotonic()  # the director stamps the reload it starts with the same clock
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            click.echo(f"lvsmail: cannot signal the director (pid {pid}): {exc.strerror}", err=True)
            sys.exit(EXIT_CONFIG)
    else:
        from lvsmail.commands.local_api import connect
        from lvsmail.console.client import APIError

        try:
            with connect(config_path, None, state_dir) as client:
                client.call("reload")
        except (APIError, OSError) as exc:
            click.echo(f"lvsmail: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
    end = asked + timeout
    while True:
        try:
            done = json.loads(record.read_text())
        except FileNotFoundError:
            done = None
        except (OSError, ValueError) as exc:
            click.echo(f"lvsmail: cannot read {record}: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        if done is not None and done.get("started", 0) >= asked:
            break
        if time.monotonic() >= end:
            click.echo(f"lvsmail: the director did not report the reload within {timeout:g} s ({record})", err=True)
            sys.exit(EXIT_PENDING)
        time.sleep(RELOAD_POLL)
    if not done.get("ok"):
        click.echo(f"lvsmail: the director refused {config_path}, running table kept:\n{done.get('error')}",
                   err=True)
        sys.exit(EXIT_CONFIG)
    reals = sum(len(s.realservers) for s in spec.services)
    click.echo(f"reloaded {config_path}: {len(spec.services)} services, {reals} real servers "
               f"in {done['finished'] - done['started']:.2f} s")


@director.command()
@cluster_file
@dry_run
def apply(config_path: str, dry_run: bool) -> None:
    """Make the kernel table match the file once, then exit (``--dry-run``: only show the plan)."""
    import asyncio

    from lvsmail.config import ConfigError, load_cluster
    from lvsmail.director.reconcile import ReconcileError, Reconciler
    from lvsmail.director.table import kernel_plan
    from lvsmail.ipvs.desired import desired_table, desired_timeouts
    from lvsmail.ipvs.model import describe
    from lvsmail.ipvs.netlink import IPVSUnavailable, NetlinkIPVS

    try:
        spec = load_cluster(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)

    async def go() -> list[str]:
        backend = NetlinkIPVS()
        try:
            if dry_run:  # the one plan (config check's too), timeouts included: what apply does
                return (await kernel_plan(backend, spec)).lines()
            report = await Reconciler(backend).sync(desired_table(spec), desired_timeouts(spec), refresh=True)
            return [describe(op) for op in report.applied]
        finally:
            await backend.close()

    try:
        lines = asyncio.run(go())
    except (IPVSUnavailable, ReconcileError) as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    for line in lines:
        click.echo(("would " if dry_run else "") + line)
    if not lines:
        click.echo("in sync: nothing to do")
    if dry_run and lines:
        sys.exit(EXIT_PENDING)


@director.command()
@json_output
@cluster_file_if_installed("Show only the services of this cluster file.")
@state_dir("Where running directors publish real-server health.")
def status(as_json: bool, config_path: str | None, state_dir: str) -> None:
    """Show virtual services, real servers, connections and traffic counters from the kernel."""
    import json

    from lvsmail.commands.local_api import status_from_api
    from lvsmail.console import status as fmt
    from lvsmail.ipvs.netlink import IPVSUnavailable, NetlinkIPVS

    if status_from_api(as_json, config_path, state_dir):  # a running director answered through its local API
        return
    backend = NetlinkIPVS()
    try:
        table = backend.dump_sync(counters=True)
        timeouts = backend.get_timeouts_sync()
        daemons = backend.daemons_sync()
    except IPVSUnavailable as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    finally:
        backend.close_sync()
    if config_path:
        from lvsmail.config import ConfigError, load_cluster
        from lvsmail.ipvs.desired import service_key

        try:
            spec = load_cluster(config_path)
            keys = {service_key(s) for s in spec.services}
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_CONFIG)
        table = {k: v for k, v in table.items() if k in keys}
    health = fmt.read_health(state_dir)
    joined = fmt.read_joined(state_dir)  # real servers that registered themselves
    from lvsmail.director import kernel_profile
    from lvsmail.net.sysctl import ProcSysctl

    profiles = fmt.read_profiles(state_dir)
    # The file named with -c says what the sysctls should be; otherwise the running directors do.
    want = kernel_profile.wanted(spec) if config_path else fmt.wanted_from(profiles)
    rows = kernel_profile.report(ProcSysctl(), want)
    from lvsmail.statefiles import StateDir

    stem = StateDir.of(state_dir, config_path).stem if config_path else None
    failover = fmt.read_failover(state_dir, stem)  # VRRP roles
    if as_json:
        data = fmt.as_json(table, timeouts, health, joined)
        data.update(fmt.profile_json(rows, daemons, profiles))
        data["failover"] = fmt.failover_json(failover)
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(fmt.as_text(table, timeouts, health, joined))
        click.echo(fmt.profile_text(rows, daemons, profiles))
        if failover:
            click.echo(fmt.failover_text(failover))
