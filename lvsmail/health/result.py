"""The outcome of one health check of one real server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One check's verdict: ``ok``, a reason naming protocol, peer and step, its latency and last step."""

    ok: bool
    reason: str
    latency: float = 0.0  # seconds from the start of the check to the verdict
    step: str = ""  # the step the dialogue reached: "connect", "greeting", "EHLO", ..., "done"
    expired: bool = False  # the check's own deadline ran out (not a refusal, reset or bad reply)
    inconclusive: bool = False  # no verdict on the server: the director itself was too late to judge

    def __str__(self) -> str:
        """The reason with the verdict, as a log line would show it."""
        word = "inconclusive" if self.inconclusive else "up" if self.ok else "down"
        return f"{word}: {self.reason}"
