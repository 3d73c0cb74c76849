"""A user's policy that raises or answers None must not take llmux down (it used to crash the
server on the next request and leave the awake backend running)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmux.core.policy import BasePolicy, PendingContext, PolicyDecision
from tests.e2e.conftest import running


class ReturnsNone(BasePolicy):
    name = "returns_none"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return None  # type: ignore[return-value]


class Raises(BasePolicy):
    name = "raises"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        raise RuntimeError("bug in the user's policy")


@pytest.mark.parametrize("policy", ["ReturnsNone", "Raises"])
async def test_a_broken_policy_is_contained_and_every_request_is_served(
    tmp_path: Path, policy: str
) -> None:
    async with running(tmp_path, type=f"{__name__}:{policy}") as rig:
        for model in ("a", "b", "a"):
            reply = await rig.chat(model)
            assert reply.status_code == 200, reply.text
        # FIFO's decision was taken in the policy's place, each time it was asked.
        await rig.hooks_become(["a:wake", "a:sleep", "b:wake", "b:sleep", "a:wake"])
        name = {"ReturnsNone": "returns_none", "Raises": "raises"}[policy]
        errors = await rig.metric("llmux_policy_errors_total", policy=name, where="on_pending")
        assert errors >= 3
    # Leaving `running` shut llmux down gracefully: the awake model's sleep hook ran.
    assert rig.hook_runs()[-1] == "a:sleep"
