"""The shared mailbox storage: is it there, is it the file system the cluster file says, can we write it.

A real server whose mailboxes live on a local directory by mistake (an NFS mount
that did not come up at boot) would accept mail that no other real server can
see; so join reads the mount table and refuses when the storage is not what the
cluster file says, and a marker file written by the first join proves to later
joins that they see the same file system.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lvsmail.spec import StorageSpec

MARKER = ".lvsmail-cluster"

#: What /proc/self/mountinfo calls each storage type of the cluster file.
FSTYPES = {
    "nfs": ("nfs",),
    "nfs4": ("nfs4",),
    "lustre": ("lustre",),
    "cephfs": ("ceph", "fuse.ceph", "fuse.ceph-fuse"),
    "glusterfs": ("fuse.glusterfs", "glusterfs"),
}
NETWORK_FSTYPES = frozenset(t for types in FSTYPES.values() for t in types) | {"cifs", "smb3", "9p", "ocfs2", "gfs2"}


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where, what type, from where."""

    point: str
    fstype: str
    source: str


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts in the order the kernel lists them (proc(5): fields, ``-``, fstype, source)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), rest[0], _unescape(rest[1])))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds ``path`` (the longest matching mount point; the last one when stacked)."""
    best: Mount | None = None
    for m in mounts:
        point = m.point.rstrip("/") or "/"
        if path == point or path.startswith(point.rstrip("/") + "/") or point == "/":
            if best is None or len(point) >= len(best.point.rstrip("/") or "/"):
                best = m
    return best


def check_storage(spec: StorageSpec, cluster: str, *, mountinfo: str | None = None,
                  writers: tuple[tuple[str, int, int, str], ...] = ()) -> tuple[list[str], list[str], str | None]:
    """(problems, notes, marker text to write or None) for the storage; changes nothing.

    ``writers``: (name, uid, gid, directory): who must be able to create files where (the mailbox owner
    in the virtual mailbox root).
    """
    problems: list[str] = []
    notes: list[str] = []
    path = spec.path
    if not os.path.isdir(path):
        return [f"storage {path} does not exist or is not a directory (is it mounted?)"], notes, None
    real = os.path.realpath(path)
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    mount = mount_of(real, parse_mountinfo(mountinfo))
    fstype = mount.fstype if mount else "unknown"
    where = f"{mount.point} ({fstype} from {mount.source})" if mount else "no mount found"
    if spec.type != "local" and fstype not in FSTYPES[spec.type]:
        problems.append(f"storage {path} is on {where}, not {spec.type} as the cluster file says "
                        "(not mounted yet? mount it, or correct mail.storage.type)")
    if spec.require_network and fstype not in NETWORK_FSTYPES:
        problems.append(f"storage {path} is on {where}, a local file system, but mail.storage.require_network "
                        "is true: other real servers would not see this mail")
    notes.append(f"storage {path}: {where}")
    for name, uid, gid, where in writers:
        if not os.path.isdir(where):
            problems.append(f"mailbox root {where} does not exist on the storage (create it, owned by {name})")
        elif not writable_as(os.path.realpath(where), uid, gid):
            problems.append(f"mailbox root {where} is not writable by {name} (uid {uid}, gid {gid}); "
                            f"chown {name} {where} or fix the export's permissions")
    marker = Path(path) / MARKER
    text = None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = None
        text = json.dumps({"cluster": cluster, "created": int(time.time())}) + "\n"
        notes.append(f"storage {path}: no {MARKER} yet; this join writes it, later joins must see it")
    except (OSError, ValueError) as exc:
        problems.append(f"storage marker {marker} is unreadable: {exc}")
        data = None
    if data is not None:
        if not isinstance(data, dict) or data.get("cluster") != cluster:
            owner = data.get("cluster") if isinstance(data, dict) else data
            problems.append(f"storage {path} belongs to cluster {owner!r}, not {cluster!r} ({marker}); "
                            "wrong export mounted?")
        else:
            notes.append(f"storage {path}: marker of cluster {cluster} found (shared with the real servers "
                         "that joined before)")
    return problems, notes, text


def writable_as(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` can create a file in ``path``: tried for real in a child process.

    access(2) would answer from this host's view of the permissions, but an NFS server
    decides for itself (root_squash, ID mapping), so the only reliable test is a write.
    """
    if os.geteuid() != 0 and uid != os.geteuid():
        return os.access(path, os.W_OK)
    pid = os.fork()
    if pid == 0:  # child: drop to the user, create and remove a file, report by exit status
        code = 1
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            probe = os.path.join(path, f".lvsmail-probe-{os.getpid()}")
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
