"""``lvsmail lab …``: run commands against a real IPVS kernel, and the demo cluster."""

from __future__ import annotations

import sys

import click


@click.group()
def lab() -> None:
    """The lab: a real IPVS/IPIP kernel (this one, or a VM) and a cluster in namespaces."""


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
@click.option("--mode", default="tun", show_default=True, type=click.Choice(["tun", "dr", "nat"]),
              help="Forwarding method.")
@click.option("--reals", default=4, show_default=True, type=click.IntRange(1, 50), help="Real servers.")
def demo(messages: int, mode: str, reals: int) -> None:
    """Build a mail cluster in namespaces, send mail through the VIP, show where it went."""
    import os

    from lvsmail.lab import vm
    from lvsmail.lab.demo import run_demo

    if os.environ.get("LVSMAIL_IN_LAB") == "1" or vm.host_capability().ok:
        sys.exit(run_demo(messages=messages, mode=mode, reals=reals))
    # In the VM, skip the full command line's imports: every module costs seconds there.
    cmd = [sys.executable, "-m", "lvsmail.lab.demo", "--messages", str(messages), "--mode", mode,
           "--reals", str(reals)]
    try:
        sys.exit(vm.run(cmd, timeout=900))
    except vm.LabError as exc:
        click.echo(f"lvsmail: {exc}", err=True)
        sys.exit(vm.EXIT_SETUP)
