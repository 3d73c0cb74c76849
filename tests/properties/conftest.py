"""Hypothesis profiles for the property suite (HYPOTHESIS_PROFILE=ci, the default; dev;
thorough), and examples/policies on sys.path, as PYTHONPATH would put it for a deployment."""

import sys
from pathlib import Path

from llmux.testing import load_profile

load_profile()

EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "examples" / "policies"
if str(EXAMPLE_POLICIES) not in sys.path:
    sys.path.insert(0, str(EXAMPLE_POLICIES))
