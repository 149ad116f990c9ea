"""``lvsmail realserver …``: the group, and join/leave/verify, which run on the real server itself."""

from __future__ import annotations

import os
import sys

import click

from lvsmail.commands.options import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PENDING,
    cluster_file,
    dry_run,
    mail_instances,
    no_reload,
)

address_option = click.option("--address", required=True, help="This real server's address, as the cluster file "
                                                                 "lists it (or as it registers).")
state_option = click.option("--state-file", type=click.Path(dir_okay=False),
                            help="Where join records what it changed (default: realserver.state_file, "
                                 "/var/lib/lvsmail/realserver.json).")
root_option = click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
                           help="Prefix for every default path written (sysctl.d, systemd, health page, state).")


@click.group()
def realserver() -> None:
    """Real servers: join, verify and leave run on the real server itself."""


def _mail_paths(postfix_config_dir, dovecot_config, courier_config_dir, root):
    from lvsmail.realserver.mailstack import MailPaths

    under = lambda p: os.path.join(root, p.lstrip("/"))  # noqa: E731
    return MailPaths(postfix_dir=postfix_config_dir or under("/etc/postfix"),
                     dovecot_config=dovecot_config or under("/etc/dovecot/dovecot.conf"),
                     courier_dir=courier_config_dir or under("/etc/courier"))


def _load(config_path):
    from lvsmail.config import ConfigError, load_cluster

    try:
        return load_cluster(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)


@realserver.command()
@cluster_file
@address_option
@dry_run
@state_option
@root_option
@click.option("--interface", help="Interface facing the director (default: realserver.interface, else the one "
                                  "holding --address).")
@mail_instances("Postfix instance (postconf -c).",
                "Dovecot's main configuration file; the settings go to conf.d/90-lvsmail.conf beside it.",
                "Courier-IMAP's directory (imapd).")
@no_reload("Do not reload Postfix/Dovecot/Courier after changing them.")
@click.option("--no-arp-check", is_flag=True, help="Skip asking the LAN who answers ARP for a DR VIP.")
def join(config_path, address, dry_run, state_file, root, interface, postfix_config_dir, dovecot_config,
         courier_config_dir, no_reload, no_arp_check) -> None:
    """Make this host a real server of the cluster; safe to run again (exit 1 with --dry-run if changes are pending)."""
    from lvsmail.realserver.arp import who_has
    from lvsmail.realserver.changes import ChangeError, JoinError
    from lvsmail.realserver.join import JoinOptions, build_plan, pending_changes
    from lvsmail.realserver.join import join as do_join
    from lvsmail.realserver.local import local_join_context

    spec = _load(config_path)
    paths = _mail_paths(postfix_config_dir, dovecot_config, courier_config_dir, root)
    extra = []
    for flag, value in (("--root", None if root == "/" else root), ("--interface", interface),
                        ("--postfix-config-dir", postfix_config_dir), ("--dovecot-config", dovecot_config),
                        ("--courier-config-dir", courier_config_dir)):
        if value:
            extra += [flag, os.path.abspath(value) if flag != "--interface" else value]
    opts = JoinOptions(address=address, config_path=os.path.abspath(config_path), paths=paths, root=root,
                       state_file=os.path.abspath(state_file) if state_file else None, interface=interface,
                       command=lvsmail_command(), extra_args=tuple(extra))
    is_root = os.geteuid() == 0
    if not is_root and not dry_run:
        click.echo("lvsmail: realserver join changes addresses, sysctls and daemon configuration: run it as root",
                   err=True)
        sys.exit(EXIT_CONFIG)
    ctx = local_join_context(paths, spec.registration, reload=not no_reload)
    try:
        prober = None if (no_arp_check or not is_root) else who_has
        try:
            plan = build_plan(spec, opts, ctx, prober)
        except (JoinError, ValueError) as exc:
            click.echo(f"lvsmail: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        for note in plan.notes:
            click.echo(f"note: {note}")
        pending = pending_changes(plan, ctx)
        if plan.problems:
            click.echo("lvsmail: join refused:", err=True)
            for problem in plan.problems:
                click.echo(f"  {problem}", err=True)
            sys.exit(EXIT_CONFIG)
        services = ", ".join(f"{s.service} ({s.forwarding}{' ' + s.vip if s.vip else ''})" for s in plan.role.served)
        click.echo(f"{plan.role.address} on {plan.interface}: {services}"
                   + ("" if plan.role.static else " [joins through registration]"))
        for change in pending:
            click.echo(f"{'would ' if dry_run else ''}{change.describe()}")
        if dry_run:
            if not pending:
                click.echo("nothing to change")
            sys.exit(EXIT_PENDING if pending else EXIT_OK)
        try:
            result = do_join(spec, opts, ctx, plan)
        except ChangeError as exc:
            click.echo(f"lvsmail: join failed at: {exc}; everything this run changed was rolled back", err=True)
            for err in exc.rollback_errors:
                click.echo(f"  could not roll back: {err}", err=True)
            sys.exit(EXIT_PENDING)
        except JoinError as exc:
            click.echo(f"lvsmail: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        for line in result.reloads + result.notes:
            click.echo(line)
        if not plan.role.static:
            click.echo(f"registered with the directors for {', '.join(plan.role.services)}")
        if not pending:
            click.echo("nothing to change: already joined")
        else:
            click.echo(f"joined: {len(pending)} change(s) made and recorded")
    finally:
        ctx.net.net.close()


@realserver.command()
# Not options.cluster_file: leave's default is the file join recorded, not the installed one.
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Cluster file (default: the one recorded by join).")
@state_option
@root_option
@click.option("--drain-timeout", type=click.FloatRange(min=0), help="Seconds to wait for active connections "
                                                                     "(default: registration.drain_timeout).")
@click.option("--force", is_flag=True, help="Go on when draining or deregistering fails.")
@no_reload("Do not reload the mail daemons after restoring them.")
@mail_instances("Postfix instance to reload.", "Dovecot instance to reload.", "Courier instance to reload.")
def leave(config_path, state_file, root, drain_timeout, force, no_reload, postfix_config_dir, dovecot_config,
          courier_config_dir) -> None:
    """Drain and deregister, then restore everything join changed and remove the state file."""
    from lvsmail.realserver.changes import JoinError
    from lvsmail.realserver.join import leave as do_leave
    from lvsmail.realserver.join import read_state
    from lvsmail.realserver.local import local_join_context
    from lvsmail.spec import RealServerDefaultsSpec

    if os.geteuid() != 0:
        click.echo("lvsmail: realserver leave restores addresses and sysctls: run it as root", err=True)
        sys.exit(EXIT_CONFIG)
    default_state = os.path.join(root, RealServerDefaultsSpec().state_file.lstrip("/"))
    path = state_file
    spec = None
    if config_path:
        spec = _load(config_path)
        if path is None and spec.realserver is not None:
            path = os.path.join(root, spec.realserver.state_file.lstrip("/"))
    path = path or default_state
    try:
        state = read_state(path)
    except JoinError as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if state is None:
        click.echo(f"not joined (no {path}): nothing to undo")
        sys.exit(EXIT_OK)
    if spec is None and os.path.exists(state.get("config", "")):
        spec = _load(state["config"])
    paths = _mail_paths(postfix_config_dir, dovecot_config, courier_config_dir, root)
    registration = spec.registration if spec is not None else None
    ctx = local_join_context(paths, registration, drain_timeout=drain_timeout, reload=not no_reload)
    try:
        result = do_leave(path, ctx, force=force)
    except JoinError as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(EXIT_PENDING)
    finally:
        ctx.net.net.close()
    for change in result.undone:
        click.echo(change.describe())
    for line in result.notes + result.reloads:
        click.echo(line)
    if result.errors:
        for err in result.errors:
            click.echo(f"could not undo: {err}", err=True)
        click.echo(f"left partly: the state file {path} keeps what is still to undo", err=True)
        sys.exit(EXIT_PENDING)
    click.echo(f"left the cluster {state['cluster']}: {len(result.undone)} change(s) undone, {path} removed")


@realserver.command()
@cluster_file
@address_option
@click.option("--mailbox", required=True, help="Test mailbox address to deliver to (e.g. probe@example.org).")
@click.option("--credentials", "credentials_path", required=True, type=click.Path(dir_okay=False),
              help="Root-only file with user= and password= of the test mailbox (for IMAP).")
@click.option("--smtp", "smtp_target", help="host:port to deliver to (default: the first VIP served, port 25).")
@click.option("--imap", "imap_target", help="host:port to fetch from (default: same host, port 143).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds for each step, and for the message to appear in the mailbox.")
def verify(config_path, address, mailbox, credentials_path, smtp_target, imap_target, timeout) -> None:
    """Deliver a message by SMTP and fetch it back by IMAP through this real server, timing each step."""
    from lvsmail.health.credentials import CredentialsError, load_credentials
    from lvsmail.realserver.changes import JoinError
    from lvsmail.realserver.join import derive_role
    from lvsmail.realserver.verify import parse_target, run_verify

    spec = _load(config_path)
    try:
        creds = load_credentials(credentials_path)
        role = derive_role(spec, address)
    except (CredentialsError, JoinError, OSError, ValueError) as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    vips = [s.vip for s in role.served if s.vip and s.forwarding != "nat"]
    host = vips[0] if vips else role.address
    smtp = parse_target(smtp_target, host, 25)
    imap = parse_target(imap_target, smtp[0], 143)
    report = run_verify(smtp, imap, mailbox, creds, timeout=timeout, helo=spec.mail.hostname if spec.mail else None)
    for step in report.steps:
        click.echo(step.line())
    sys.exit(EXIT_OK if report.ok else EXIT_PENDING)


def lvsmail_command(argv0: str | None = None, executable: str | None = None) -> tuple[str, ...]:
    """How the boot unit runs this very installation of lvsmail: the program that runs now, by absolute path.

    Started as the console script (``lvsmail``, found on PATH or named by
    path: /usr/bin/lvsmail from the package, .venv/bin/lvsmail from a virtual
    environment), ``sys.argv[0]`` is that script: the kernel hands the
    interpreter the path it executed. Started otherwise (``python -m lvsmail``,
    a test runner), the same interpreter with ``-m lvsmail`` runs the same
    installation. Neither guesses from PATH, which at boot may find
    another lvsmail or none.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    script = os.path.basename(argv0 or "")
    if script.startswith("lvsmail") and not script.endswith(".py") and os.path.isfile(argv0) \
            and os.access(argv0, os.X_OK):
        return (os.path.abspath(argv0),)
    # Not resolved with realpath: a virtual environment's python is a link, and it is the link that
    # selects the environment.
    return (os.path.abspath(executable), "-m", "lvsmail")
