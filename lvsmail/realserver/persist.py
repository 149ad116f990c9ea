"""What makes a join survive a reboot: the sysctl drop-in, the module list and the systemd unit.

The kernel forgets addresses and sysctls at reboot. The drop-in restores the ARP and
reverse-path settings early (before any interface can answer ARP for the VIP), and
the unit re-runs the same join once the network and remote file systems are up; the
join finds everything else in place and changes nothing. Examples of the three files
are kept in the repository's ``realservers/`` directory.
"""

from __future__ import annotations

import shlex

from lvsmail.net.realserver import SetSysctl, Step

UNIT_NAME = "lvsmail-realserver.service"
SYSCTL_NAME = "90-lvsmail-realserver.conf"
MODULES_NAME = "lvsmail-realserver.conf"


def sysctl_dropin(steps: list[Step], cluster: str) -> str:
    """sysctl.d text with every sysctl the network plan sets, in plan order (pure)."""
    lines = [
        f"# lvsmail real server of cluster {cluster}, written by `lvsmail realserver join`;",
        "# `lvsmail realserver leave` removes it. Applied at boot by systemd-sysctl.",
        "# arp_ignore=1/arp_announce=2: only the director answers ARP for the VIP (the kernel takes the",
        "# maximum of `all` and the interface); rp_filter=0 (TUN): packets decapsulated on tunl0 come",
        "# from clients routed via another interface (the kernel takes the maximum here too).",
    ]
    seen = set()
    for step in steps:
        if isinstance(step, SetSysctl) and step.key not in seen:
            seen.add(step.key)
            # "-" prefix: tunl0's keys exist only once ipip is loaded; systemd-sysctl must not fail on them.
            prefix = "-" if ".tunl0." in step.key or ".ip6tnl0." in step.key else ""
            lines.append(f"{prefix}{step.key} = {step.value}")
    return "\n".join(lines) + "\n"


def modules_load(modules: list[str]) -> str:
    """modules-load.d text: the tunnel modules, loaded before the sysctls refer to tunl0."""
    return "# lvsmail real server (TUN): the IP-in-IP decapsulation device tunl0 comes with ipip.\n" + \
        "".join(f"{m}\n" for m in modules)


def unit_text(argv: list[str], storage: str | None = None) -> str:
    """The systemd unit that re-runs ``join`` at boot (pure; ``argv`` is the full join command)."""
    mounts = f"RequiresMountsFor={storage}\n" if storage else ""
    return (
        "[Unit]\n"
        "Description=lvsmail real server: VIP, ARP settings, mail stack check and registration\n"
        "Documentation=man:lvsmail(1)\n"
        "Wants=network-online.target\n"
        "After=network-online.target remote-fs.target\n"
        f"{mounts}"
        "Before=postfix.service dovecot.service courier-imap.service\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart={shlex.join(argv)}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )
