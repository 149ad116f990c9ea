"""Click options shared by several commands, defined once."""

import click

cluster_file = click.option(
    "-c", "--config", "config_path", required=True,
    type=click.Path(dir_okay=False), help="Cluster file (YAML).",
)
json_output = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
dry_run = click.option("--dry-run", is_flag=True, help="Print the plan and exit 1 if changes are pending.")

#: Exit codes shared by every command: 0 ok, 1 pending/unhealthy, 2 usage or config error.
EXIT_OK, EXIT_PENDING, EXIT_CONFIG = 0, 1, 2
