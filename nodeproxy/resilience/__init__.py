"""Pure decision cores that keep a sick backend from hurting everyone else.

Outlier ejection (``outlier``), active health-check tracking (``health``), the
per-service circuit breaker (``breaker``), overload thresholds (``overload``),
retry policy and budget (``retry``, ``budget``), local rate limits
(``ratelimit``) and per-source fairness (``fairness``). None of them imports
trio or reads a clock: every time-dependent call takes ``now``, randomness
comes from an injected ``random.Random``, and the pipeline owns each instance.
See docs/traffic.md.
"""

from __future__ import annotations


class IllegalTransition(Exception):
    """A state machine was asked for a transition its table does not allow."""

    def __init__(self, machine: str, state: object, event: object) -> None:
        super().__init__(f"{machine}: no transition from {state} on {event}")
        self.state = state
        self.event = event
