"""A director for the VRRP namespace tests: the real Director loop and failover, IPVS faked.

The host kernel has no IPVS, and VRRP needs none: run as
``ip netns exec NS python3 tests/netns/vrrp_node.py CLUSTER_FILE STATE_DIR``.
SIGHUP reloads, SIGTERM exits gracefully (priority 0), SIGKILL is a crash.
"""

import asyncio
import logging
import sys

from lvsmail.director.daemon import Director, serve
from lvsmail.ipvs.fake import FakeIPVS
from lvsmail.net.sysctl import FakeSysctl


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(name)s %(message)s", datefmt="%H:%M:%S")
    director = Director(sys.argv[1], FakeIPVS(), state_dir=sys.argv[2], repair_interval=5.0, sysctl=FakeSysctl())
    asyncio.run(serve(director))


if __name__ == "__main__":
    main()
