"""What makes a join survive a reboot: the sysctl drop-in, the module list and the systemd unit.

The kernel forgets addresses and sysctls at reboot. The sysctl drop-in restores the
ARP and reverse-path settings early (before any interface can answer ARP for the VIP),
and the unit re-runs the same join once the network and remote file systems are up;
the join finds everything else in place and changes nothing.

One way for every installation: the unit itself is generic (the Debian package
installs it; a source install gets the same text from join), and join writes a
systemd drop-in beside it with its own command: the absolute path of the lvsmail
that ran it and every option it was given. ``leave`` removes the drop-in and the
enable link. Examples of the files are kept in the repository's ``realservers/``.
"""

from __future__ import annotations

import os
import shlex

from lvsmail.net.realserver import SetSysctl, Step
from lvsmail.spec import RealServerDefaultsSpec

UNIT_NAME = "lvsmail-realserver.service"
#: The drop-in join writes in /etc/systemd/system/lvsmail-realserver.service.d/.
DROPIN_NAME = "join.conf"
#: Where packages install units (Debian 12 /lib is /usr/lib; both are read by systemd).
VENDOR_UNIT_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system")
#: The state file of a join without --state-file or realserver.state_file: the unit's condition.
DEFAULT_STATE_FILE = RealServerDefaultsSpec().state_file
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


def exec_line(argv: list[str] | tuple[str, ...]) -> str:
    """A command for ExecStart=: shell-style quoting, with ``%`` and ``$`` doubled (systemd.unit(5) specifiers,
    systemd.service(5) variable expansion) so a path holding them reaches the program unchanged."""
    return shlex.join(argv).replace("%", "%%").replace("$", "$$")


def vendor_unit(root: str = "/") -> str | None:
    """The unit a package installed (its path on the host, without ``root``), or None on a source install."""
    for directory in VENDOR_UNIT_DIRS:
        path = f"{directory}/{UNIT_NAME}"
        if os.path.isfile(os.path.join(root, path.lstrip("/"))):
            return path
    return None


def unit_text(command: list[str] | tuple[str, ...]) -> str:
    """The real-server unit (pure): the packaged file is ``unit_text(["/usr/bin/lvsmail"])``.

    It carries no join of its own: the drop-in that join writes (``dropin_text``)
    gives the command, and the condition keeps the unit idle on a host that has
    not joined, so installing the package (or enabling the unit by mistake)
    changes nothing. Hardening: see the comments in the text.
    """
    return f"""\
# lvsmail real server: at boot, re-runs `lvsmail realserver join` exactly as the administrator ran it.
# Join writes {UNIT_NAME}.d/{DROPIN_NAME} in /etc/systemd/system (its command, by the
# lvsmail that ran it, its state file and the mail storage to wait for) and enables this unit;
# `lvsmail realserver leave` removes both. A host that has not joined has no state file: the
# unit does nothing there. Join finds everything in place at boot except what the kernel forgot
# (the VIP, routes) and restores only that.
#
# Hardened less than the director, on purpose: join writes sysctls under /proc/sys/net,
# /etc/sysctl.d, /etc/modules-load.d, /etc/systemd/system, the Postfix/Dovecot/Courier
# configuration, the health page and a marker on the mail storage (anywhere the cluster file
# says, /home included), loads ipip when it is missing, and runs postfix/doveadm to reload them,
# which need root's file access (CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER, set-gid helpers). So:
# /usr and /boot read-only, /proc/sys read-only except net, no capabilities a network and mail
# configuration step never needs, and the system-call, namespace and address-family limits.
[Unit]
Description=lvsmail real server: VIP, ARP settings, mail stack check and registration
Documentation=man:lvsmail(8) man:lvsmail-cluster(5)
ConditionPathExists={DEFAULT_STATE_FILE}
Wants=network-online.target
After=network-online.target remote-fs.target
Before=postfix.service dovecot.service courier-imap.service

[Service]
Type=oneshot
RemainAfterExit=yes
# Replaced by the drop-in with the whole command of the join (cluster file, address, options).
ExecStart={exec_line([*command, "realserver", "join"])}
# A oneshot unit has no start timeout by default: a join stuck on an unreachable director or a
# hung mount must not hold the boot (Postfix and Dovecot are ordered after it) for ever.
TimeoutStartSec=5min
ProtectSystem=yes
ProtectKernelTunables=yes
ReadWritePaths=/proc/sys/net
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
PrivateTmp=yes
CapabilityBoundingSet=~CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_TIME CAP_WAKE_ALARM CAP_SYS_PTRACE CAP_SYS_RAWIO \\
    CAP_MKNOD CAP_LINUX_IMMUTABLE CAP_SYS_PACCT CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_AUDIT_CONTROL \\
    CAP_AUDIT_READ CAP_BPF CAP_PERFMON CAP_SYSLOG CAP_BLOCK_SUSPEND CAP_LEASE CAP_SYS_TTY_CONFIG \\
    CAP_IPC_LOCK CAP_SYS_CHROOT
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service @module
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def dropin_text(argv: list[str], state_file: str, cluster: str, storage: str | None = None) -> str:
    """The drop-in join writes beside the unit (pure): this join's command, its state file, its storage."""
    mounts = f"RequiresMountsFor={storage}\n" if storage else ""
    return (
        f"# Written by `lvsmail realserver join` for cluster {cluster}; `lvsmail realserver leave` removes it.\n"
        "[Unit]\n"
        "ConditionPathExists=\n"
        f"ConditionPathExists={state_file}\n"
        f"{mounts}"
        "\n"
        "[Service]\n"
        "ExecStart=\n"
        f"ExecStart={exec_line(argv)}\n"
    )
