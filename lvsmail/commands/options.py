"""Click options shared by several commands, defined once."""

import os

import click

from lvsmail.statefiles import DEFAULT_STATE_DIR

#: The cluster file of a host installed from the package (a conffile of the Debian package).
DEFAULT_CLUSTER_FILE = "/etc/lvsmail/cluster.yaml"


def _default_file() -> str:
    # Read at call time, not import time: tests point it at a file of their own.
    return DEFAULT_CLUSTER_FILE


#: ``-c FILE`` for commands that need a cluster file; without it, the installed one.
cluster_file = click.option(
    "-c", "--config", "config_path", default=_default_file, show_default=DEFAULT_CLUSTER_FILE,
    type=click.Path(dir_okay=False), help="Cluster file (YAML).",
)


def _installed_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The given file, else the installed one when it exists (a host without it keeps the command's own default)."""
    if value is not None:
        return value
    return DEFAULT_CLUSTER_FILE if os.path.isfile(DEFAULT_CLUSTER_FILE) else None


def cluster_file_if_installed(help: str):
    """``-c FILE`` for commands that also work without a file: default the installed one, if there is one."""
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), callback=_installed_file,
                        help=f"{help} [default: {DEFAULT_CLUSTER_FILE} if it exists]")


def cluster_file_argument(f):
    """``[FILE]`` for the config commands that read one file: default the installed one."""
    return click.argument("file", required=False, default=_default_file, type=click.Path(dir_okay=False))(f)


def state_dir(help: str = "Where running directors keep their sockets and state."):
    """``--state-dir DIR``, with the help of the command that declares it."""
    return click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
                        type=click.Path(file_okay=False), help=help)


json_output = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
dry_run = click.option("--dry-run", is_flag=True, help="Print the plan and exit 1 if changes are pending.")


def output_file(help: str):
    """``-o FILE`` for the config commands that print a file: write it there instead."""
    return click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help=help)


#: ``--name`` of the importers: the cluster name they write.
cluster_name = click.option("--name", help="Cluster name (default: the file name without its extension).")


def no_reload(help: str):
    """``--no-reload`` of realserver join and leave: leave the mail daemons running as they are."""
    return click.option("--no-reload", is_flag=True, help=help)


def mail_instances(postfix: str, dovecot: str, courier: str):
    """``--postfix-config-dir``, ``--dovecot-config``, ``--courier-config-dir``: which mail daemons to act on."""
    options = [click.option("--postfix-config-dir", type=click.Path(file_okay=False), help=postfix),
               click.option("--dovecot-config", type=click.Path(dir_okay=False), help=dovecot),
               click.option("--courier-config-dir", type=click.Path(file_okay=False), help=courier)]

    def apply(f):
        for option in reversed(options):  # click lists options in decorator order, top first
            f = option(f)
        return f
    return apply


# Same name, other meaning, so declared where they are used:
# - --timeout: each command waits for something else, with its own default (director reload,
#   realserver verify, the realserver_ops --wait, lab run);
# - --service: a name filter in the dashboard, one service by name in the realserver_ops commands;
# - realserver leave's -c: no installed default, it reads the file join recorded;
# - the lab's --state-dir: the lab's own directory (/run/lvsmail-lab), default None.

#: Exit codes shared by every command: 0 ok, 1 pending/unhealthy, 2 usage or config error.
EXIT_OK, EXIT_PENDING, EXIT_CONFIG = 0, 1, 2
