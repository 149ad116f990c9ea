"""``lvsmail lab up --stack X`` for the anchor stacks lvsmail is compared with (issue 17): the same
topology, real servers and mail stack with another director layer.

For every registered stack other than lvsmail's own (covered by test_lab_up.py):
``lab up --stack X --realservers 2`` returns with exactly one director holding
the VIP, both directors' kernels listing both real servers for smtp, imap and
http (the stack's own health checks found them up; only the VIP holder's kernel
for a stack whose table is a resource of the holder), and one message sent to
the VIP accepted and read back over IMAP; ``lab down`` then leaves no namespace
and no process.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from lvsmail.lab import stacks

pytestmark = [pytest.mark.kernel, pytest.mark.whole_cluster]

#: Under emulation lab up with two real servers takes a few minutes.
UP_TIMEOUT = 1200
#: The stacks this test builds: every registered anchor (a stack whose module is not in this checkout is
#: not registered, and so not asserted on).
ANCHORS = [name for name in stacks.names() if name != "lvsmail"]
#: The program a stack's director runs, as its recorded command line shows it (the seed's start-up script
#: execs heartbeat later, so its recorded line is the script's).
PROGRAMS = {"keepalived": "/usr/sbin/keepalived"}


def _lvsmail(log: Path, *args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the lvsmail command; its output goes to ``log`` (readable from outside the VM while it runs)."""
    from lvsmail.lab.cluster_up import run_logged

    return run_logged(log, *args, timeout=timeout)


@pytest.mark.parametrize("stack", ANCHORS)
def test_lab_up_with_an_anchor_stack_holds_one_vip_both_tables_and_accepts_mail(stack, lab_ok, lab_out,
                                                                                 alone_in_the_lab, capsys):
    from lvsmail.lab.cluster_up import MailCluster, find_states
    from lvsmail.lab.demo import send_and_read_back
    from lvsmail.lab.mailstack import _alive
    from lvsmail.net import netns

    state_dir = Path(f"/run/lvsmail-lab-s{os.getpid()}")  # short: Dovecot's socket paths live under it
    t0 = time.monotonic()
    up = _lvsmail(lab_out / f"lab-up-{stack}.log", "lab", "up", "--stack", stack, "--realservers", "2",
                  "--state-dir", str(state_dir))
    up_seconds = time.monotonic() - t0
    states = find_states(state_dir)
    try:
        assert up.returncode == 0, up.stdout
        assert len(states) == 1, states
        state = json.loads(states[0].read_text())
        assert state["stack"] == stack
        cluster = MailCluster.load(states[0])
        assert cluster.stack.name == stack
        # The director layer is the anchor's own daemon, not lvsmail's.
        for d in cluster.directors:
            assert cluster.director_alive(d), d.number
            cmdline = state["pids"][f"director{d.number}"]["cmdline"]
            assert "director start" not in cmdline and PROGRAMS.get(stack, "") in cmdline, cmdline
        holders = cluster.vip_holders()
        assert len(holders) == 1, [d.number for d in holders]
        if cluster.stack.failback:
            assert holders == [cluster.directors[0]]  # priority 150 wins
        addresses = {rs.address for rs in cluster.reals}
        assert len(addresses) == 2
        # Both kernels hold the table, or only the VIP holder's where it is a resource of the holder
        # (the seed's ldirectord runs under heartbeat).
        for d in (cluster.directors if cluster.stack.table_on_standby else holders):
            table = cluster.table(d)
            for port in (25, 143, 80):
                dests = table[f"TCP {cluster.topo.vip}:{port}"].dests
                assert {x.address for x in dests if x.weight > 0} == addresses, (stack, d.number, port, table)
        assert table[f"TCP {cluster.topo.vip}:25"].persistent_jiffies  # smtp keeps the seed's persistence

        result = send_and_read_back(cluster, 1, say=print)
        assert result["accepted"] == 1, result
        assert result["missing"] == [] and result["read"] == 1, result

        t1 = time.monotonic()
        down = _lvsmail(lab_out / f"lab-down-{stack}.log", "lab", "down", "--state-dir", str(state_dir), timeout=600)
        down_seconds = time.monotonic() - t1
        assert down.returncode == 0, down.stdout
        assert not [ns for ns in netns.list_netns() if ns.startswith(f"{cluster.topo.prefix}-")]
        assert not [n for n, rec in state["pids"].items() if _alive(rec["pid"])]
        assert find_states(state_dir) == []
        with capsys.disabled():
            print(f"\n[lab up --stack {stack}] up {up_seconds:.0f} s, one mail through the VIP and back, "
                  f"down {down_seconds:.0f} s")
    finally:
        for path in find_states(state_dir):  # a failed assertion above must not leave the cluster behind
            MailCluster.load(path).down(say=lambda m: None)
