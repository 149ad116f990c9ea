"""``lvsmail director start`` as a benchmark variant: another bound on checks in flight, or on uvloop.

The director's command line has no option for the health engine's concurrency
nor for the event loop; this runs the same daemon (``Director`` + ``serve``) with
``--concurrency`` given to the engine and, with ``--uvloop``, on the loop
``lvsmail.health.loop.run`` picks (uvloop when installed).

``--check-workers N`` shares the checks with N worker processes (``lvsmail.health.worker``).

    python3 bench/health_director.py [--concurrency 64] [--uvloop] [--check-workers N] -c FILE --state-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lvsmail.director.daemon import Director, serve  # noqa: E402
from lvsmail.ipvs.netlink import NetlinkIPVS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--repair-interval", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=None, help="the engine's bound (default: the engine's)")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (lvsmail.health.loop.run)")
    ap.add_argument("--check-workers", type=int, default=0, help="worker processes that share the checks")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    d = Director(args.config, NetlinkIPVS(), repair_interval=args.repair_interval, state_dir=args.state_dir,
                 engine_options=({} if args.concurrency is None else {"concurrency": args.concurrency})
                 | {"workers": args.check_workers})
    if args.uvloop:
        from lvsmail.health import loop

        logging.info("event loop: %s", loop.name())
        loop.run(serve(d))
    else:
        asyncio.run(serve(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
