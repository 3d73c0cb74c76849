"""FIFO: switch to a waiting model as soon as a request for it arrives (llmux 2.4's default)."""

from __future__ import annotations

from llmux.core.policy import BasePolicy, PendingContext, PolicyDecision, SwitchNow


class FifoPolicy(BasePolicy):
    """Always switch now. The scheduler asks oldest waiter first, so models are served in
    the order their first waiting request arrived; `min_active_secs` is the only guard
    against thrashing, exactly as in llmux 2.4."""

    name = "fifo"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return SwitchNow(f"{ctx.target_queue_depth} waiting, oldest {ctx.oldest_waiting:.3f}s")
