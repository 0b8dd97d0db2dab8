from __future__ import annotations

import pytest

from guestfail.core.decision import Facts, Health, Phase, decide

S, P = 2, 3


@pytest.mark.parametrize(
    ("facts", "phase", "health", "want", "switch"),
    [
        # primary       enslaved carrier drained active
        (Facts(S, True, None, False, False, False, S), Phase.STANDBY_ONLY, Health.DEGRADED, S, False),
        (Facts(S, True, P, False, True, False, S), Phase.JOINING, Health.DEGRADED, S, False),
        (Facts(S, True, P, True, True, False, S), Phase.ON_PRIMARY, Health.HEALTHY, P, True),
        (Facts(S, True, P, True, True, False, P), Phase.ON_PRIMARY, Health.HEALTHY, P, False),
        (Facts(S, True, P, True, False, False, P), Phase.ON_STANDBY, Health.DEGRADED, S, True),
        (Facts(S, True, P, True, True, True, P), Phase.DRAINING, Health.DEGRADED, S, True),
        (Facts(S, False, P, True, False, False, S), Phase.ON_STANDBY, Health.FAILED, S, False),
        (Facts(S, False, None, False, False, False, None), Phase.STANDBY_ONLY, Health.FAILED, S, True),
        (Facts(S, False, P, True, True, False, P), Phase.ON_PRIMARY, Health.HEALTHY, P, False),
        (
            Facts(S, True, P, True, True, False, P, error="enslave failed"),
            Phase.FAILED,
            Health.FAILED,
            P,
            False,
        ),
    ],
)
def test_table(facts: Facts, phase: Phase, health: Health, want: int, switch: bool) -> None:
    d = decide(facts)
    assert (d.phase, d.health, d.want_active, d.switch) == (phase, health, want, switch)


def test_why_names_the_cause() -> None:
    assert decide(Facts(S, True, P, True, False, False, P)).why == "primary lost carrier"
    assert decide(Facts(S, False, None, False, False, False, S)).why == "no member has carrier"
