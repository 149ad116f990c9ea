"""The atheris (libFuzzer) process for one target: ``python fuzz_one.py TARGET [libFuzzer options] CORPUS...``.

lvsmail's modules are imported under ``atheris.instrument_imports`` so that libFuzzer
sees their branch coverage (``cov:``/``ft:`` in its status lines); the standard
library and the libraries it uses are not instrumented, which keeps executions fast.
Started by ``tests/fuzz/run``; run it directly only to pass libFuzzer options by hand.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

with atheris.instrument_imports(include=["lvsmail"]):
    import lvsmail.config.loader  # noqa: F401  (instrumented before parser_targets imports them)
    import lvsmail.console.api  # noqa: F401
    import lvsmail.health.checkers.dialogue  # noqa: F401
    import lvsmail.health.checkers.http  # noqa: F401
    import lvsmail.health.checkers.imap  # noqa: F401
    import lvsmail.health.checkers.pop3  # noqa: F401
    import lvsmail.health.checkers.replies  # noqa: F401
    import lvsmail.health.checkers.smtp  # noqa: F401
    import lvsmail.interop.keepalived  # noqa: F401
    import lvsmail.interop.ldirectord  # noqa: F401
    import lvsmail.ipvs.wire  # noqa: F401
    import lvsmail.net.iproute  # noqa: F401
    import lvsmail.realserver.persist  # noqa: F401
    import lvsmail.registration.http  # noqa: F401
    import lvsmail.registration.protocol  # noqa: F401
    import lvsmail.vrrp.auth  # noqa: F401
    import lvsmail.vrrp.packet  # noqa: F401
    try:
        import lvsmail.registration.bounded_json  # noqa: F401
    except ImportError:
        pass

import parser_targets  # noqa: E402


def main() -> None:
    """Fuzz the target named by the first argument; the rest goes to libFuzzer."""
    if len(sys.argv) < 2 or sys.argv[1] not in parser_targets.TARGETS:
        sys.exit(f"usage: fuzz_one.py TARGET [libFuzzer options] [CORPUS...]; targets: "
                 f"{', '.join(parser_targets.TARGETS)}")
    name = sys.argv.pop(1)

    def one_input(data: bytes) -> None:
        parser_targets.run_guarded(name, data)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
