"""Checks through the VIP on the real kernel: a real server that lost its VIP fails them.

Two services share the same real servers and SMTP sinks: port 25 is checked
``via: vip`` (the probe travels DR or TUN through a per-server fwmark service,
like client traffic), port 2525 is checked directly at the real server's own
address. When one real server loses the VIP from ``lo`` (DR) or ``tunl0`` (TUN),
it can no longer accept client traffic: only the via-VIP check sees that.
"""

from __future__ import annotations

import json
import time

import pytest

from lvsmail.lab.cluster import LabDirector, kernel_table
from lvsmail.lab.smtp import SmtpSinks
from lvsmail.lab.topology import Topology

pytestmark = pytest.mark.kernel


def cluster(topo: Topology) -> str:
    reals = "[" + ", ".join(rs.address for rs in topo.reals) + "]"
    check = "{type: smtp, interval: 1, timeout: 2%s}"
    return (f"cluster: via\nvips: [{topo.vip}]\nservices:\n"
            f"  - {{name: smtp, vip: {topo.vip}, port: 25, forwarding: {topo.mode}, realservers: {reals},"
            f" check: {check % ', via: vip'}}}\n"
            f"  - {{name: direct, vip: {topo.vip}, port: 2525, forwarding: {topo.mode}, realservers: {reals},"
            f" check: {check % ''}}}\n")


def published_failure(path, service: str, address: str, timeout: float = 5.0) -> str:
    """The last failure the director published for a real server (the health file is at most 1 s behind)."""
    end, reason = time.monotonic() + timeout, ""
    while not reason and time.monotonic() < end:
        health = json.loads(path.read_text())
        reason = next(r["last_failure"] for r in health["realservers"]
                      if r["name"] == service and r["address"] == address)
        if not reason:
            time.sleep(0.2)
    return reason


def has(table, key: str, address: str) -> bool:
    svc = table.get(key)
    return svc is not None and svc.dest(address) is not None


@pytest.mark.parametrize("mode", ["dr", "tun"])
def test_real_server_without_the_vip_fails_its_via_vip_check_only(lab_ok, mode, tmp_path):
    with Topology(mode, reals=2) as topo, SmtpSinks([(rs.role, rs.ns) for rs in topo.reals], ports=(25, 2525)):
        rs1 = topo.reals[0]
        config = tmp_path / "via.yaml"
        config.write_text(cluster(topo))
        director = LabDirector(topo, config, tmp_path, repair_interval=2).start()
        smtp, direct = f"TCP {topo.vip}:25", f"TCP {topo.vip}:2525"
        try:
            table = director.wait_for(lambda t: all(has(t, k, rs.address) for k in (smtp, direct) for rs in topo.reals),
                                      what="both services with both real servers")
            probes = [k for k in table if k.startswith("FWM ")]
            assert len(probes) == 2  # one probe service per real server of the via-vip service
            time.sleep(3)  # several check rounds: healthy servers pass through the VIP
            assert has(kernel_table(topo), smtp, rs1.address)

            link = "tunl0" if mode == "tun" else "lo"
            topo.run(rs1, ["ip", "addr", "del", f"{topo.vip}/32", "dev", link])
            t0 = time.monotonic()
            director.wait_for(lambda t: not has(t, smtp, rs1.address), timeout=60,
                              what=f"{rs1.address} removed from {smtp} after losing the VIP")
            detected = time.monotonic() - t0
            table = kernel_table(topo)
            assert has(table, direct, rs1.address), "the direct check must still pass"
            assert has(table, smtp, topo.reals[1].address)
            reason = published_failure(tmp_path / "state" / "via.health.json", "smtp", rs1.address)
            assert f"{rs1.address}:25 via {topo.vip}:25" in reason and "timeout" in reason

            topo.run(rs1, ["ip", "addr", "add", f"{topo.vip}/32", "dev", link])
            director.wait_for(lambda t: has(t, smtp, rs1.address), timeout=60, what="recovery with the VIP back")
            print(f"{mode}: VIP loss detected in {detected:.1f} s (interval 1 s, timeout 2 s): {reason}")
        finally:
            director.stop()
