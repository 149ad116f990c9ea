"""Kernel tests: real IPVS and IPIP, one lab cluster per forwarding method, shared by all tests.

Everything here is slow under emulation (an interpreter start costs seconds,
importing pyroute2 a dozen), so each forwarding method gets exactly one topology,
one ``lvsmail director start`` and one set of captures and SMTP sinks, built when
its first test needs it and torn down when the tests move on to the next method
(tests are sorted by method so each is built once). The director is launched as
soon as its namespace exists so its start-up overlaps the wiring.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lvsmail.lab import vm

#: Order in which the forwarding methods' clusters are built (tests are sorted by it).
MODES = ("tun", "dr", "nat")

#: Ports of the lab services: persistent SMTP, plain WLC with weights 1/2/3, plain WLC weights 1.
SMTP_PORT, WLC_PORT, SPREAD_PORT = 25, 2525, 587


def _lab_problem() -> str | None:
    """Why kernel tests cannot run here, or None."""
    cap = vm.host_capability()
    return None if cap.ok else f"{cap.reason}; run them in the lab: deploy/lab/run python3 -m pytest tests/kernel"


def pytest_collection_modifyitems(config, items) -> None:
    """Group kernel tests by forwarding method so each cluster is built once; whole-cluster tests
    (``lvsmail lab up``, ``lab chaos``: their own topology of a dozen namespaces) run last."""
    def mode_of(item) -> int:
        if item.get_closest_marker("whole_cluster"):
            return len(MODES)
        case = getattr(getattr(item, "callspec", None), "params", {}).get("case", "")
        mode = str(case).rstrip("6")
        return MODES.index(mode) if mode in MODES else 0  # tests without a case use the first cluster

    kernel = [i for i in items if "tests/kernel/" in i.nodeid.replace(os.sep, "/")]
    if kernel:
        first = items.index(kernel[0])
        rest = [i for i in items if i not in kernel]
        kernel.sort(key=mode_of)
        items[:] = rest[:first] + kernel + rest[first:]


@pytest.fixture(scope="session")
def lab_ok() -> None:
    """Skip (with the reason) unless this kernel has IPVS and IPIP and we are root."""
    problem = _lab_problem()
    if problem:
        pytest.skip(problem)


class LabCluster:
    """One forwarding method's running cluster: topology, director, sinks, captures."""

    def __init__(self, mode: str, out_dir: Path) -> None:
        from lvsmail.lab.cluster import LabDirector, LabService, cluster_yaml
        from lvsmail.lab.topology import Topology

        self.mode = mode
        self.topo = Topology(mode)
        self.workdir = out_dir / f"kernel-{mode}-{self.topo.prefix}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        reals = [rs.role for rs in self.topo.reals]
        self.services = [
            LabService("smtp", SMTP_PORT, {r: 1 for r in reals}, persistent=120),
            LabService("wlc", WLC_PORT, {"rs1": 1, "rs2": 2, "rs3": 3}),
            LabService("spread", SPREAD_PORT, {r: 1 for r in reals}),
        ]
        if mode == "dr":
            self.services.append(LabService("smtp6", SMTP_PORT, {r: 1 for r in reals}, family="inet6"))
        self.config = self.workdir / "cluster.yaml"
        self.config.write_text(cluster_yaml(self.topo, self.services, name=f"lab-{mode}"))
        self.director = LabDirector(self.topo, self.config, self.workdir)
        self.captures: dict[str, object] = {}
        self.sinks = None
        self.timings: dict[str, float] = {}
        self.ports = {"smtp": SMTP_PORT, "wlc": WLC_PORT, "spread": SPREAD_PORT}

    def start(self) -> LabCluster:
        """Bring everything up and wait until the kernel table is complete."""
        from lvsmail.lab.capture import Capture
        from lvsmail.lab.smtp import SmtpSinks

        t0 = time.monotonic()
        self.topo.create_namespaces()
        self.director.start()
        self.topo.wire()
        self.timings["wire"] = time.monotonic() - t0
        for rs in self.topo.reals:
            self.captures[rs.role] = Capture(rs.ns, "eth0")
        self.captures["director-out"] = Capture(self.topo.director.ns, "eth0")
        self.sinks = SmtpSinks([(rs.role, rs.ns) for rs in self.topo.reals],
                               ports=(SMTP_PORT, WLC_PORT, SPREAD_PORT)).start()
        want = {self.key(s): len(s.weights) for s in self.services}
        self.director.wait_for(lambda t: all(k in t and len(t[k].dests) == n for k, n in want.items()),
                               timeout=600, what=f"services {', '.join(want)}")
        self.timings["ready"] = time.monotonic() - t0
        return self

    def key(self, svc_or_port, family: str = "inet") -> str:
        """ipvsadm-style key of a service (``TCP 192.0.2.33:25``)."""
        if not isinstance(svc_or_port, int):
            family, svc_or_port = svc_or_port.family, svc_or_port.port
        return f"TCP [{self.topo.vip6}]:{svc_or_port}" if family == "inet6" else f"TCP {self.topo.vip}:{svc_or_port}"

    def close(self) -> None:
        """Tear down in reverse order, even after a partial start."""
        if self.sinks is not None:
            self.sinks.stop()
        for cap in self.captures.values():
            cap.close()
        self.director.stop()
        self.topo.close()


@pytest.fixture(scope="session")
def lab_out(tmp_path_factory) -> Path:
    """Where kernel tests leave cluster files and director logs (the VM's writable directory)."""
    base = os.environ.get("LVSMAIL_LAB_OUT")
    path = Path(base) if base else tmp_path_factory.mktemp("lab")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def clusters(lab_ok, lab_out):
    """Factory: ``clusters(mode)`` returns that method's running cluster, closing the previous one."""
    current: dict[str, LabCluster] = {}
    failed: dict[str, str] = {}

    def get(mode: str) -> LabCluster:
        if mode in failed:
            pytest.fail(f"the {mode} lab cluster did not start: {failed[mode]}", pytrace=False)
        if mode not in current:
            for other in list(current):
                current.pop(other).close()
            cluster = LabCluster(mode, lab_out)
            try:
                cluster.start()
            except Exception as exc:
                cluster.close()
                failed[mode] = f"{type(exc).__name__}: {exc}"
                raise
            current[mode] = cluster
        return current[mode]

    def close() -> None:
        for mode in list(current):
            current.pop(mode).close()

    get.close = close
    yield get
    close()


@pytest.fixture
def alone_in_the_lab(clusters) -> None:
    """For whole-cluster tests: the last forwarding method's cluster is stopped first (the VM's two
    emulated CPUs are all the whole cluster gets)."""
    clusters.close()
