"""Health checking of real servers: checkers, their results, and the rise/fall state machine.

* ``run_check(spec, address, port, credentials)`` — one check, one ``Result``;
* ``HealthState`` / ``step`` / ``next_interval`` — the pure rise/fall decisions;
* ``load_credentials(path)`` — a login from a root-only file.

The engine that schedules checks and applies decisions to IPVS builds on these.
"""

from lvsmail.health.checkers import run_check
from lvsmail.health.credentials import Credentials, CredentialsError, load_credentials
from lvsmail.health.result import Result
from lvsmail.health.state import HealthState, Transition, TransitionEvent, next_interval, step

__all__ = [
    "Credentials", "CredentialsError", "HealthState", "Result", "Transition", "TransitionEvent",
    "load_credentials", "next_interval", "run_check", "step",
]
