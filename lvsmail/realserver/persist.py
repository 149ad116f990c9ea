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

import dataclasses
import json
import os
import shlex
import typing

from lvsmail.net.realserver import STEP_TYPES, SetSysctl, Step
from lvsmail.realserver.changes import CHANGE_TYPES, Change, change_from_dict
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


# -- reading the state file back -------------------------------------------------------
# The state file is written by join (root only, 0600), but it is read back by leave and by the
# next join after crashes, editors and disk trouble: every way it can be wrong is a StateFileError
# that names the file and the field, and nothing is changed.

#: The state file's format version (join writes it; anything else is refused).
STATE_VERSION = 1
#: A join's record is a few kilobytes (the undo list of files and settings); more is not ours.
MAX_STATE_BYTES = 4 * 1024 * 1024
#: Top-level fields and their JSON types; ``undo`` is checked entry by entry.
_STATE_FIELDS = {"version": int, "cluster": str, "address": str, "config": (str, type(None)),
                 "joined": (int, float), "interface": (str, type(None)), "undo": list}


class StateFileError(ValueError):
    """The real server's state file cannot be read back; the message names the file and what is wrong."""


def parse_state(text: str, source: str = "<state>") -> dict:
    """A state file's text → its record with ``undo`` as Change objects; StateFileError on anything else.

    Every undo entry is checked against the fields of its change (and network step) type before it
    is built, so a damaged file is refused here rather than failing half-way through a leave.
    """
    if len(text) > MAX_STATE_BYTES:
        raise StateFileError(f"state file {source} is larger than {MAX_STATE_BYTES} bytes")
    try:
        data = json.loads(text)
    except RecursionError:
        raise StateFileError(f"state file {source} is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise StateFileError(f"state file {source} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateFileError(f"state file {source} must hold a JSON object, not {type(data).__name__}")
    if data.get("version") != STATE_VERSION or isinstance(data.get("version"), bool):
        raise StateFileError(f"state file {source}: version {data.get('version')!r}, expected {STATE_VERSION}")
    if "undo" not in data:
        raise StateFileError(f"state file {source}: no undo list")
    for key, kinds in _STATE_FIELDS.items():
        if key in data and (not isinstance(data[key], kinds) or isinstance(data[key], bool)):
            raise StateFileError(f"state file {source}: {key} has the wrong type ({type(data[key]).__name__})")
    undo: list[Change] = []
    for i, entry in enumerate(data["undo"]):
        where = f"state file {source}: undo[{i}]"
        _check_record(entry, CHANGE_TYPES, where)
        if entry["op"] == "net":
            _check_record(entry.get("step"), STEP_TYPES, f"{where}.step")
        try:
            undo.append(change_from_dict(entry))
        except (TypeError, ValueError, KeyError) as exc:  # a change's own check of its values
            raise StateFileError(f"{where}: {exc}") from None
    return dict(data, undo=undo)


def _check_record(entry: object, types: dict[str, type], where: str) -> None:
    """``entry`` is ``{"op": KNOWN, field: value...}`` with exactly the fields (and JSON types) of its type."""
    if not isinstance(entry, dict):
        raise StateFileError(f"{where} must be an object, not {type(entry).__name__}")
    op = entry.get("op")
    if not isinstance(op, str) or op not in types:
        raise StateFileError(f"{where}: unknown change {op!r}")
    cls = types[op]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in entry.keys() - {"op"}:
        if name not in fields:
            raise StateFileError(f"{where}: unknown field {name!r} for {op!r}")
    for name, f in fields.items():
        if name not in entry:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise StateFileError(f"{where}: {op!r} lacks {name!r}")
            continue
        if not _json_fits(entry[name], hints[name]):
            raise StateFileError(f"{where}: {name} {_short(entry[name])} does not fit {op!r}")


def _json_fits(value: object, hint) -> bool:
    """Whether a JSON value fits a field's annotation (tuples arrive as lists; a step is checked apart)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, Step):
        return isinstance(value, dict)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_json_fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_json_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_json_fits(v, a) for v, a in zip(value, args))
    return False


def _short(value: object) -> str:
    """A value for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
