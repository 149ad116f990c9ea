"""``lvsmail lab demo``: the whole seed cluster comes up, mail goes through the VIP and back, and it goes away.

``lvsmail lab up`` builds it (a VRRP director pair with connection sync, four
real servers each with Postfix, Dovecot and a health page, prepared by
``lvsmail realserver join``, Maildirs on one shared directory). The demo then
sends the messages through the VIP with aiosmtplib from sixteen client
addresses (SMTP is persistent per client address, as in the seed, so one
client alone would always land on the same real server), reads every one of
them back over IMAP through the VIP with imapclient, prints one dashboard
frame from the director that holds the VIP, and tears everything down.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter

from lvsmail.lab.topology import MODES, wait_until


def _say(msg: str) -> None:
    """Progress line, flushed (the VM console buffers otherwise)."""
    print(msg, flush=True)


async def _send_all(vip: str, msgs: list, concurrency: int) -> list:
    """Send each message once, ``concurrency`` at a time; returns the session events."""
    from lvsmail.lab.chaos.clients import send_one

    sem = asyncio.Semaphore(concurrency)

    async def one(m):
        async with sem:
            return await send_one(vip, m)

    return list(await asyncio.gather(*(one(m) for m in msgs)))


def send_and_read_back(cluster, messages: int, say=_say, attempts: int = 3, read_timeout: float = 120) -> dict:
    """Send ``messages`` through the VIP (retrying failures like an MTA), read them back over IMAP.

    Returns counts: accepted, per real server, found over IMAP, missing Message-IDs.
    """
    from lvsmail.lab.chaos.clients import Message, imap_fetch_ids
    from lvsmail.lab.mailstack import DOMAIN, USERS
    from lvsmail.net import netns

    vip, ns = cluster.topo.vip, cluster.topo.client.ns
    sources = cluster.clients()
    users = list(USERS)
    msgs = [Message(mid=f"demo-{i}-{time.time_ns()}@client.example.net", rcpt=f"{users[i % len(users)]}@{DOMAIN}",
                    source=sources[i % len(sources)], created=time.time()) for i in range(messages)]
    t0 = time.monotonic()
    for _ in range(attempts):
        todo = [m for m in msgs if m.accepted_at is None]
        if not todo:
            break
        netns.run_in_netns(ns, asyncio.run, _send_all(vip, todo, concurrency=5))
    sent_s = time.monotonic() - t0
    accepted = [m for m in msgs if m.accepted_at is not None]
    by_server = Counter(m.accepted_by for m in accepted)
    say(f"sent {len(accepted)}/{messages} messages through {vip}:25 in {sent_s:.1f} s from {len(sources)} client "
        f"addresses; accepted by " + ", ".join(f"{k} {v}" for k, v in sorted(by_server.items(), key=str)))
    for m in msgs:
        if m.accepted_at is None:
            say(f"  not accepted after {m.attempts} attempts: {m.mid}: {m.errors[-1] if m.errors else '?'}")
    want: dict[str, set[str]] = {}
    for m in accepted:
        want.setdefault(m.rcpt, set()).add(m.mid)

    def all_found():
        found = {}
        for rcpt in want:
            found[rcpt] = netns.run_in_netns(ns, imap_fetch_ids, vip, rcpt, USERS[rcpt.split("@")[0]])
        return found if all(want[r] <= found[r] for r in want) else None

    t1 = time.monotonic()
    try:
        found = wait_until(all_found, read_timeout, interval=1.0, what="every accepted message in IMAP")
    except TimeoutError:
        found = {rcpt: netns.run_in_netns(ns, imap_fetch_ids, vip, rcpt, USERS[rcpt.split("@")[0]]) for rcpt in want}
    missing = sorted(mid for r in want for mid in want[r] - found.get(r, set()))
    read = sum(len(want[r] & found.get(r, set())) for r in want)
    say(f"read back over IMAP through {vip}:143: {read}/{len(accepted)} messages in {len(want)} mailboxes "
        f"({time.monotonic() - t1:.1f} s)")
    for mid in missing:
        say(f"  missing: {mid}")
    return {"messages": messages, "accepted": len(accepted), "by_server": dict(by_server), "read": read,
            "missing": missing}


def show_dashboard(cluster, say=_say) -> None:
    """One frame of ``lvsmail dashboard --once`` from the director holding the VIP (``director status`` without it)."""
    holder = cluster.vip_holder() or cluster.directors[0]
    say(f"\n$ lvsmail dashboard --once --state-dir {holder.state_dir}    # director{holder.number}, holds the VIP")
    try:
        from lvsmail.commands.dashboard import dashboard
    except ImportError:
        say("(no dashboard in this lvsmail: showing lvsmail director status instead)")
        from lvsmail.commands.director import status
        from lvsmail.net import netns

        netns.run_in_netns(holder.ns, status.main, args=["--state-dir", str(holder.state_dir)],
                           prog_name="lvsmail director status", standalone_mode=False)
        sys.stdout.flush()
        return
    try:
        dashboard.main(args=["--once", "--state-dir", str(holder.state_dir)], prog_name="lvsmail dashboard",
                       standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            say(f"(lvsmail dashboard exited with {exc.code})")
    sys.stdout.flush()


def run_demo(messages: int = 30, mode: str = "tun", reals: int = 4) -> int:
    """Run the demo here (needs root and IPVS); exit status 0 when every message went through and came back."""
    from lvsmail.lab.cluster_up import MailCluster

    started = time.monotonic()
    cluster = MailCluster(mode, reals)
    result = None
    try:
        timings = cluster.up(say=_say)
        _say(f"cluster up in {timings['ready']:.0f} s: {cluster.topo.describe()}")
        result = send_and_read_back(cluster, messages)
        # IPVS folds its per-CPU counters into the totals on a 2 s timer.
        time.sleep(2.5)
        show_dashboard(cluster)
    finally:
        problems = cluster.down(say=_say)
    for p in problems:
        _say(f"teardown: {p}")
    _say(f"\ntorn down; demo took {time.monotonic() - started:.0f} s")
    ok = result is not None and result["accepted"] == messages and not result["missing"] and not problems
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run the demo here if this kernel can, else inside the lab VM (same arguments)."""
    import argparse

    from lvsmail.lab import vm

    parser = argparse.ArgumentParser(prog="python3 -m lvsmail.lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--mode", choices=MODES, default="tun")
    parser.add_argument("--reals", type=int, default=4)
    args = parser.parse_args(argv)
    if os.environ.get("LVSMAIL_IN_LAB") == "1" or vm.host_capability().ok:
        return run_demo(messages=args.messages, mode=args.mode, reals=args.reals)
    cmd = [sys.executable, "-m", "lvsmail.lab.demo", "--messages", str(args.messages), "--mode", args.mode,
           "--reals", str(args.reals)]
    return vm.run(cmd, timeout=1500, memory="3G")


if __name__ == "__main__":
    sys.exit(main())
