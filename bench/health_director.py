"""``lvsmail director start`` with a different bound on checks in flight (a benchmark variant).

The director's command line has no option for the health engine's concurrency;
this runs the same daemon (``Director`` + ``serve``) with ``--concurrency`` given
to the engine, to measure what the bound does on a machine that cannot keep up.

    python3 bench/health_director.py --concurrency 64 -c FILE --state-dir DIR [--repair-interval S]
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
    ap.add_argument("--concurrency", type=int, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    d = Director(args.config, NetlinkIPVS(), repair_interval=args.repair_interval, state_dir=args.state_dir,
                 engine_options={"concurrency": args.concurrency})
    asyncio.run(serve(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
