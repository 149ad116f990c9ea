"""Cluster files for tests, built from the few values a test cares about.

Most director tests need the same small cluster: one VIP, an SMTP service, two
real servers. Pasting the YAML into every file let the copies drift; here a test
names only what differs (``service(forwarding="dr", check={...})``), and the
rest is the common cluster. Values are written as JSON, which YAML reads as is.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The VIP of the test clusters (TEST-NET-1).
VIP = "192.0.2.33"
#: The two real servers of the test clusters (TEST-NET-2).
REALSERVERS = ("198.51.100.20", "198.51.100.32")


def service(name: str = "smtp", port: int = 25, *, vip: str = VIP, realservers=REALSERVERS, **keys) -> dict:
    """One service's keys in the file's order: name, vip, port, then ``keys``, then its real servers.

    A key whose value is None is left out (so a test can drop a default).
    """
    entry = {"name": name, "vip": vip, "port": port, **keys, "realservers": list(realservers)}
    return {k: v for k, v in entry.items() if v is not None}


def cluster_yaml(*services: dict, name: str = "test", vips=(VIP,), check: dict | None = None,
                 extra: str = "") -> str:
    """The text of a cluster file: its services (default: ``service()``), then ``extra`` (other sections).

    ``check`` is given to every service that has none of its own.
    """
    lines = [f"cluster: {name}", f"vips: {json.dumps(list(vips))}", "services:"]
    for svc in services or (service(),):
        if check is not None and "check" not in svc:
            svc = {**svc, "check": check}
        first, *rest = svc.items()
        lines.append(f"  - {first[0]}: {json.dumps(first[1])}")
        lines.extend(f"    {key}: {json.dumps(value)}" for key, value in rest)
    text = "\n".join(lines) + "\n"
    return text + extra if not extra or extra.endswith("\n") else text + extra + "\n"


def cluster_file(tmp_path: Path, *services: dict, filename: str = "cluster.yaml", **options) -> Path:
    """Write ``cluster_yaml(*services, **options)`` to ``tmp_path/filename`` and return its path."""
    path = Path(tmp_path) / filename
    path.write_text(cluster_yaml(*services, **options))
    return path
