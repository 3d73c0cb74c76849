"""llmux's Hypothesis profiles."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase, settings

# ---- Hypothesis profiles -------------------------------------------------------------------


def register_profiles() -> None:
    """Register llmux's Hypothesis profiles: "ci" (quick, the default for the suite), "dev"
    (quicker still) and "thorough" (for a nightly run or before a release)."""
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("dev", max_examples=10, stateful_step_count=20, **common)
    settings.register_profile("ci", max_examples=75, stateful_step_count=50, **common)
    settings.register_profile(
        "thorough",
        max_examples=1000,
        stateful_step_count=100,
        phases=list(Phase),
        **common,
    )


def load_profile(default: str = "ci") -> str:
    """Load the profile named by $HYPOTHESIS_PROFILE (or `default`); returns its name."""
    register_profiles()
    name = os.environ.get("HYPOTHESIS_PROFILE", default)
    settings.load_profile(name)
    return name
