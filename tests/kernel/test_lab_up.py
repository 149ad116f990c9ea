"""``lvsmail lab up`` / ``status`` / ``down`` in the lab: the whole seed cluster, mail through the VIP and back.

One run of the real command line, as an administrator would type it: ``lab up
--mode nat`` builds the director pair (VRRP for the VIP and for the real servers'
floating gateway, connection sync), four real servers prepared by ``lvsmail
realserver join`` with Postfix, Dovecot and the health page, and returns with
everything still running. NAT here because the chaos test runs TUN, and DR is
exercised by the kernel tests' director pair (test_failover.py). This test then sends mail through the
VIP with aiosmtplib and reads every message back over IMAP through the VIP
with imapclient, checks ``lab status``, and runs ``lab down``, after which no
namespace, process or file of the cluster may remain.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.whole_cluster]

#: Under emulation `lab up` takes minutes (two directors, four joins, eight mail daemons).
UP_TIMEOUT = 1500


def _lvsmail(log: Path, *args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the lvsmail command; its output goes to ``log`` (readable from outside the VM while it runs)."""
    from lvsmail.lab.cluster_up import run_logged

    return run_logged(log, *args, timeout=timeout)


def test_lab_up_mail_through_the_vip_and_back_over_imap_then_down_leaves_nothing(lab_ok, lab_out, alone_in_the_lab,
                                                                                  capsys):
    from lvsmail.lab.cluster_up import MailCluster, find_states
    from lvsmail.lab.demo import send_and_read_back
    from lvsmail.lab.mailstack import _alive
    from lvsmail.lab.topology import NAT_GATEWAY
    from lvsmail.net import netns

    # Short: Dovecot's sockets live under it, and a unix socket path has at most 107 bytes.
    state_dir = Path(f"/run/lvsmail-lab-t{os.getpid()}")
    t0 = time.monotonic()
    up = _lvsmail(lab_out / "lab-up.log", "lab", "up", "--mode", "nat", "--state-dir", str(state_dir))
    up_seconds = time.monotonic() - t0
    states = find_states(state_dir)
    try:
        assert up.returncode == 0, up.stdout
        assert len(states) == 1, states
        cluster = MailCluster.load(states[0])
        state = json.loads(states[0].read_text())
        prefix = cluster.topo.prefix
        # The pair: director 1 (priority 150) holds the VIP and the real servers' gateway; both kernels
        # have the three services, forwarding by NAT.
        assert cluster.vip_holders() == [cluster.directors[0]]
        assert cluster.mode == "nat"
        gateway_on = [d.number for d in cluster.directors
                      if f" {NAT_GATEWAY}/" in _addresses(d.ns, "eth1")]
        assert gateway_on == [1], gateway_on
        for d in cluster.directors:
            table = cluster.table(d)
            for port in (25, 143, 80):
                dests = table[f"TCP {cluster.topo.vip}:{port}"].dests
                assert len(dests) == 4 and {x.forward for x in dests} == {"Masq"}, (d.number, table)
        # Each real server was prepared by `lvsmail realserver join` (its state file records the changes).
        for rs in cluster.reals:
            assert (cluster.rs_dir(rs.role) / "realserver.json").exists(), rs.role
            assert "clustermail.example.org" in (cluster.postfix(rs.role).conf / "main.cf").read_text()

        t1 = time.monotonic()
        result = send_and_read_back(cluster, 20, say=print)
        mail_seconds = time.monotonic() - t1
        assert result["accepted"] == 20, result
        assert result["missing"] == [] and result["read"] == 20, result
        assert len(result["by_server"]) >= 2, f"persistence by client address should spread the load: {result}"

        status = _lvsmail(lab_out / "lab-status.log", "lab", "status", "--state-dir", str(state_dir), timeout=600)
        assert status.returncode == 0, status.stdout
        assert "director1" in status.stdout and " VIP " in status.stdout, status.stdout
        assert "20 messages" in status.stdout, status.stdout

        t2 = time.monotonic()
        down = _lvsmail(lab_out / "lab-down.log", "lab", "down", "--state-dir", str(state_dir), timeout=600)
        down_seconds = time.monotonic() - t2
        assert down.returncode == 0, down.stdout
        assert not [ns for ns in netns.list_netns() if ns.startswith(f"{prefix}-")]
        assert not [n for n, rec in state["pids"].items() if _alive(rec["pid"])]
        assert not Path(state["work"]).exists()
        assert find_states(state_dir) == []
        with capsys.disabled():
            print(f"\n[lab up] up {up_seconds:.0f} s, 20 mails through the VIP and back over IMAP {mail_seconds:.0f} s "
                  f"(by server {result['by_server']}), down {down_seconds:.0f} s")
    finally:
        for path in find_states(state_dir):  # a failed assertion above must not leave the cluster behind
            MailCluster.load(path).down(say=lambda m: None)


def _addresses(ns: str, link: str) -> str:
    """``ip -o addr show dev LINK`` in namespace ``ns``."""
    return subprocess.run(["ip", "-n", ns, "-o", "addr", "show", "dev", link], capture_output=True, text=True,
                          timeout=60).stdout
