"""``lvsmail config``: validate, check against the kernel, diff, and import or export ldirectord/keepalived files."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lvsmail.commands.options import EXIT_CONFIG, cluster_file_argument, cluster_name, output_file, state_dir

# The loader and importer are imported inside each command: every ``lvsmail`` start
# would otherwise pay for them, and in the emulated lab that costs seconds.


@click.group(name="config")
def config() -> None:
    """Validate, check and compare cluster files; import and export ldirectord and keepalived configurations."""


@config.command()
@cluster_file_argument
def validate(file: str) -> None:
    """Check FILE (default: /etc/lvsmail/cluster.yaml) and report every problem at once (exit 2 if there is any)."""
    from lvsmail.config import ConfigError, load_cluster

    try:
        spec = load_cluster(file)
    except ConfigError as exc:
        _fail(exc)
    hosts = {rs.address for service in spec.services for rs in service.realservers}
    click.echo(f"{file}: ok, {len(spec.services)} services, {len(hosts)} real servers")


@config.command("import-ldirectord")
@click.argument("file", type=click.Path(dir_okay=False))
@output_file("Write the cluster file here instead of standard output.")
@cluster_name
def import_ldirectord_cmd(file: str, output: str | None, name: str | None) -> None:
    """Print the cluster file equivalent to the ldirectord.cf FILE.

    Directives lvsmail cannot express are listed on standard error with their
    line; the conversion still succeeds (exit 0).  Exit 2 if FILE is broken.
    """
    from lvsmail.config import ConfigError, dump_cluster
    from lvsmail.interop.ldirectord import import_ldirectord

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


@config.command("import-keepalived")
@click.argument("file", type=click.Path(dir_okay=False))
@output_file("Write the cluster file here instead of standard output.")
@cluster_name
def import_keepalived_cmd(file: str, output: str | None, name: str | None) -> None:
    """Print the cluster file equivalent to the virtual servers of the keepalived.conf FILE.

    Only the LVS part is imported (virtual_server, virtual_server_group,
    lvs_timeouts).  Directives lvsmail cannot express are listed on standard
    error with their file and line; the conversion still succeeds (exit 0).
    Exit 2 if FILE is broken.
    """
    from lvsmail.config import ConfigError, dump_cluster
    from lvsmail.interop.keepalived import import_keepalived

    try:
        result = import_keepalived(Path(file), name=name)
    except ConfigError as exc:
        _fail(exc)
    for warning in result.warnings:
        click.echo(warning, err=True)
    text = f"# Imported from {file} by lvsmail config import-keepalived.\n" + dump_cluster(result.spec)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


@config.command("export-keepalived")
@click.argument("file", type=click.Path(dir_okay=False))
@output_file("Write keepalived.conf here (atomically) instead of standard output.")
@click.option("--router-id", help="keepalived's router_id for this director (default: the cluster name).")
def export_keepalived_cmd(file: str, output: str | None, router_id: str | None) -> None:
    """Print the keepalived.conf (keepalived 2.2.7) equivalent to the cluster file FILE.

    FILE is one director's cluster file: its failover: section becomes the
    vrrp_instance blocks, sync: the lvs_sync_daemon, each service a
    virtual_server.  Settings keepalived cannot express are comments in the
    output and listed on standard error; the export still succeeds (exit 0).
    lvsmail config import-keepalived reads the output back to the same
    services.  Exit 2 if FILE is invalid.
    """
    from lvsmail.interop.export_keepalived import export_keepalived

    spec = _load(file)
    _emit(lambda: export_keepalived(spec, router_id=router_id), output)


@config.command("export-ldirectord")
@click.argument("file", type=click.Path(dir_okay=False))
@output_file("Write ldirectord.cf here (atomically) instead of standard output.")
@click.option("--logfile", default="/var/log/ldirectord.log", show_default=True,
              help="ldirectord's logfile= setting.")
def export_ldirectord_cmd(file: str, output: str | None, logfile: str) -> None:
    """Print the ldirectord.cf (ldirectord 4.12) equivalent to the cluster file FILE.

    Settings ldirectord cannot express (failover and sync, which heartbeat
    did for ldirectord) are comments in the output and listed on standard
    error; the export still succeeds (exit 0).  lvsmail config
    import-ldirectord reads the output back to the same services.  Exit 2
    if FILE is invalid.
    """
    from lvsmail.interop.export_ldirectord import export_ldirectord

    spec = _load(file)
    _emit(lambda: export_ldirectord(spec, logfile=logfile), output)


def _emit(export, output: str | None) -> None:
    """Run an exporter; warnings to standard error, the text to OUTPUT (atomically) or standard output."""
    from lvsmail.config import ConfigError

    try:
        result = export()
    except ConfigError as exc:
        _fail(exc)
    for warning in result.warnings:
        click.echo(warning, err=True)
    if not output:
        click.echo(result.text, nl=False)
        return
    target = Path(output)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(result.text, encoding="utf-8")
        os.replace(tmp, target)  # a daemon reloading it never reads half a file
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        click.echo(f"lvsmail: cannot write {output}: {exc.strerror or exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None


_STATE_DIR = state_dir("Where a running director records the services it owns.")


@config.command()
@cluster_file_argument
@_STATE_DIR
def check(file: str, state_dir: str) -> None:
    """Validate FILE (default: /etc/lvsmail/cluster.yaml), then show what applying it to the kernel would change.

    Nothing is applied.  Exit 0 when the kernel already matches (or, with a
    note, when this kernel has no IPVS to compare with), 1 when changes are
    pending, 2 when FILE is invalid or the kernel cannot be read.
    """
    from lvsmail.commands.options import EXIT_PENDING

    spec = _load(file)
    hosts = {rs.address for service in spec.services for rs in service.realservers}
    click.echo(f"{file}: ok, {len(spec.services)} services, {len(hosts)} real servers")
    kplan = _kernel_plan(spec, file, state_dir)
    if kplan is None:
        return
    if kplan.in_sync:
        click.echo("kernel: in sync, nothing to apply")
        return
    click.echo(f"kernel: {len(kplan.lines())} changes pending (not applied):")
    for line in kplan.lines():
        click.echo(f"  would {line}")
    raise SystemExit(EXIT_PENDING)


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("other", required=False, type=click.Path(dir_okay=False))
@_STATE_DIR
def diff(file: str, other: str | None, state_dir: str) -> None:
    """Differences between FILE and the running kernel, or between two cluster files.

    With OTHER, the semantic difference from FILE to OTHER: services, real
    servers and check settings added (+), removed (-) or changed (~); order and
    formatting do not count.  Exit 0 when there is no difference, 1 when there
    is, 2 when a file is invalid or the kernel cannot be read.
    """
    from lvsmail.commands.options import EXIT_PENDING
    from lvsmail.config.diff import diff_specs

    if other is None:
        spec = _load(file)
        kplan = _kernel_plan(spec, file, state_dir, require=True)
        for op_line in kplan.lines():
            sign = "-" if op_line.startswith("delete") else "+" if op_line.startswith("add") else "~"
            click.echo(f"{sign} {op_line}")
        if not kplan.in_sync:
            raise SystemExit(EXIT_PENDING)
        click.echo("no difference: the kernel matches the file")
        return
    old, new = _load_all(file, other)
    changes = diff_specs(old, new)
    for change in changes:
        click.echo(str(change))
    if changes:
        raise SystemExit(EXIT_PENDING)
    click.echo(f"no difference between {file} and {other}")


def _load(file: str):
    """The validated file, or exit 2 listing every problem."""
    from lvsmail.config import ConfigError, load_cluster

    try:
        return load_cluster(file)
    except ConfigError as exc:
        _fail(exc)


def _load_all(*files: str) -> list:
    """Every file validated; the problems of all of them are printed before exiting 2."""
    from lvsmail.config import ConfigError, load_cluster

    specs, problems = [], []
    for file in files:
        try:
            specs.append(load_cluster(file))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        _fail(ConfigError(problems))
    return specs


def _kernel_plan(spec, file: str, state_dir: str, require: bool = False):
    """The plan against the running kernel; None (after saying why) when this kernel has no IPVS.

    ``require``: no IPVS is an error (exit 2) rather than a note, for commands whose only answer is the plan.
    """
    import asyncio

    from lvsmail.director.table import kernel_plan, load_owned
    from lvsmail.ipvs.netlink import IPVSUnavailable, NetlinkIPVS
    from lvsmail.statefiles import StateDir

    owned, warning = load_owned(StateDir.of(state_dir, file))
    if warning:
        click.echo(warning, err=True)

    async def go():
        backend = NetlinkIPVS()
        try:
            return await kernel_plan(backend, spec, owned)
        finally:
            await backend.close()

    try:
        return asyncio.run(go())
    except IPVSUnavailable as exc:
        if require:
            click.echo(f"lvsmail: cannot compare with the kernel: {exc}", err=True)
            raise SystemExit(EXIT_CONFIG) from None
        click.echo(f"kernel: not compared: {exc}", err=True)
        click.echo("kernel: no IPVS here, so no plan; the file itself is valid")
        return None
    except OSError as exc:
        click.echo(f"lvsmail: cannot read the kernel's IPVS table: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None


def _fail(exc) -> None:
    """Print every problem on standard error and exit with the config-error code."""
    for problem in exc.problems:
        click.echo(str(problem), err=True)
    raise SystemExit(EXIT_CONFIG)
