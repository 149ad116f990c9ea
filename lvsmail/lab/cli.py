"""``lvsmail lab …``: run commands against a real IPVS kernel, and the demo cluster.

The command group lives in the lab package (not with the production commands) so the package that
leaves the lab out leaves its commands out with it, and no production command imports the lab.
"""

from __future__ import annotations

import sys

import click


@click.group()
def lab() -> None:
    """The lab: a real IPVS/IPIP kernel (this one, or a VM) and a cluster in namespaces."""


#: ``--mode`` of demo, up and chaos: the forwarding method of the lab cluster's services
#: (lab-only, so defined here rather than in lvsmail.commands.options).
mode_option = click.option("--mode", default="tun", show_default=True, type=click.Choice(["tun", "dr", "nat"]),
                           help="Forwarding method.")


@lab.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--memory", default="2G", show_default=True, help="VM memory.")
@click.option("--cpus", type=int, default=None, help="VM CPUs (default: as many as this machine).")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory, writable inside the VM (default: lab-out/).")
@click.option("--vm", "force_vm", is_flag=True, help="Use the VM even if this kernel has IPVS and IPIP.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def run(memory: str, cpus: int | None, timeout: float | None, out_dir: str | None, force_vm: bool,
        cmd: tuple[str, ...]) -> None:
    """Run CMD in the lab: here if this kernel has IPVS and IPIP, else in a virtme-ng VM."""
    from pathlib import Path

    from lvsmail.lab import vm

    try:
        rc = vm.run(list(cmd), memory=memory, timeout=timeout, out_dir=Path(out_dir) if out_dir else None,
                    force_vm=force_vm, cpus=cpus)
    except vm.LabError as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(vm.EXIT_SETUP)
    sys.exit(rc)


@lab.command()
@click.option("--messages", default=30, show_default=True, type=click.IntRange(1, 1000),
              help="Messages to send through the VIP.")
@mode_option
@click.option("--reals", default=4, show_default=True, type=click.IntRange(1, 20), help="Real servers.")
def demo(messages: int, mode: str, reals: int) -> None:
    """Bring the whole cluster up, send mail through the VIP, read it back over IMAP, show the dashboard, tear down."""
    from lvsmail.lab.demo import main as demo_main

    # The demo module re-executes itself in the VM when this kernel lacks IPVS or IPIP;
    # in the VM it skips the full command line's imports (every module costs seconds there).
    sys.exit(demo_main(["--messages", str(messages), "--mode", mode, "--reals", str(reals)]))


# Not lvsmail.commands.options.state_dir: the same name, but the lab's own directory. None passes nothing
# on, so cluster_up's own default (cluster_up.STATE_DIR, not imported here: the lab starts fast) applies.
state_dir_option = click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                                help="Where lab clusters keep their files and state (default: /run/lvsmail-lab).")
prefix_option = click.option("--prefix", default=None, help="Which lab cluster, when several are up.")


def _stack_names() -> list[str]:
    """The registered director stacks (their modules are not imported for this)."""
    from lvsmail.lab import stacks

    return list(stacks.names())


stack_option = click.option("--stack", default="lvsmail", show_default=True, type=click.Choice(_stack_names()),
                            help="Director layer: lvsmail's own, or an anchor it is compared with "
                                 "(seed: heartbeat + ldirectord; keepalived).")


def _cluster_up_main(argv: list[str]) -> int:
    """Run ``lvsmail.lab.cluster_up`` with these arguments, here."""
    from lvsmail.lab.cluster_up import main as up_main

    return up_main(argv)


def _in_lab() -> bool:
    """Whether this kernel (or the VM we are in) can run the lab directly."""
    import os

    from lvsmail.lab import vm

    return os.environ.get("LVSMAIL_IN_LAB") == "1" or vm.host_capability().ok


@lab.command()
@mode_option
@click.option("--realservers", default=4, show_default=True, type=click.IntRange(1, 20), help="Real servers.")
@click.option("--then", "then_cmd", default=None,
              help="Shell command to run once the cluster is up; the cluster is torn down afterwards. "
                   "Without IPVS here the cluster lives in a lab VM for one command only: default "
                   "`lvsmail lab status`.")
@state_dir_option
@stack_option
def up(mode: str, realservers: int, then_cmd: str | None, state_dir: str | None, stack: str) -> None:
    """Build the seed deployment: a VRRP director pair with sync, N real servers with Postfix and Dovecot."""
    argv = ["up", "--mode", mode, "--stack", stack, "--realservers", str(realservers)]
    if state_dir:
        argv += ["--state-dir", state_dir]
    if _in_lab():
        sys.exit(_cluster_up_main(argv + (["--then", then_cmd] if then_cmd else [])))
    from lvsmail.lab import vm
    from lvsmail.lab.cluster_up import _reexec_in_vm

    # The VM ends with the command: up, the follow-up command and down run in one boot.
    then_cmd = then_cmd or f"{sys.executable} -m lvsmail.lab.cluster_up status"
    click.echo("lvsmail: this kernel has no IPVS/IPIP: the cluster runs in a lab VM for the length of --then "
               f"({then_cmd!r}) and is torn down with it", err=True)
    try:
        sys.exit(_reexec_in_vm(argv + ["--then", then_cmd], timeout=1800))
    except vm.LabError as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(vm.EXIT_SETUP)


@lab.command()
@prefix_option
@state_dir_option
def down(prefix: str | None, state_dir: str | None) -> None:
    """Remove the lab cluster: stop every process it started, delete its namespaces and files."""
    sys.exit(_cluster_up_main(["down", *(["--prefix", prefix] if prefix else []),
                               *(["--state-dir", state_dir] if state_dir else [])]))


@lab.command()
@prefix_option
@state_dir_option
def status(prefix: str | None, state_dir: str | None) -> None:
    """Show the lab cluster: directors (VIP, tables), real servers (Postfix, Dovecot, web), stored messages."""
    sys.exit(_cluster_up_main(["status", *(["--prefix", prefix] if prefix else []),
                               *(["--state-dir", state_dir] if state_dir else [])]))


@lab.command()
@click.option("--duration", default=300.0, show_default=True, type=click.FloatRange(20, 3600),
              help="Seconds of faults (setup, final delivery and accounting come on top).")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the fault schedule.")
@mode_option
@click.option("--realservers", default=4, show_default=True, type=click.IntRange(2, 20), help="Real servers.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where the JSON report and the plot go (default: $LVSMAIL_LAB_OUT or lab-out/).")
@click.option("--kinds", default=None, help="Only these fault kinds (comma-separated), e.g. director_kill,rs_hang.")
@stack_option
def chaos(duration: float, seed: int, mode: str, realservers: int, out_dir: str | None, kinds: str | None,
          stack: str) -> None:
    """Seeded faults while MTA-like clients send and read mail; asserts no accepted message is lost.

    Faults that have no meaning for the stack are reported as n/a with the reason."""
    from lvsmail.lab.chaos.run import main as chaos_main

    argv = ["--duration", str(duration), "--seed", str(seed), "--mode", mode, "--stack", stack,
            "--realservers", str(realservers)]
    if out_dir:
        argv += ["--out", out_dir]
    if kinds:
        argv += ["--kinds", kinds]
    sys.exit(chaos_main(argv))
