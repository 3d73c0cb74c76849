"""Asking a switch policy, which may be a user's and may be broken.

Every call to a policy goes through here: an exception, or an answer that is not a decision,
becomes a `PolicyError` effect and FIFO's answer for that call, so a bug in a policy costs it
its say for one round, never a waiter or the server.
"""

from __future__ import annotations

import math

from llmux.core.messages import PolicyError, SchedulerEffect
from llmux.core.policy import (
    Defer,
    PendingContext,
    PolicyDecision,
    ScheduleContext,
    Skip,
    SwitchNow,
    SwitchPolicy,
)


def policy_name(policy: SwitchPolicy) -> str:
    name = getattr(policy, "name", None)
    return name if isinstance(name, str) else type(policy).__name__


def ask_pending(
    policy: SwitchPolicy, ctx: PendingContext, now: float, effects: list[SchedulerEffect]
) -> PolicyDecision:
    """The policy's decision, or FIFO's (switch now, default victims) if the policy raised or
    answered something that is not a decision."""
    try:
        decision: object = policy.on_pending(ctx)
    except Exception as exc:
        problem = f"on_pending raised {_one_line(exc)}"
    else:
        if isinstance(decision, SwitchNow | Skip | Defer) and _well_formed(decision):
            return decision
        problem = _not_a_decision(decision)
    effects.append(PolicyError(policy_name(policy), "on_pending", problem, now))
    return SwitchNow("policy error, so FIFO's choice")


def ask_tick(
    policy: SwitchPolicy, ctx: ScheduleContext, now: float, effects: list[SchedulerEffect]
) -> str | None:
    """The model the policy's tick names, or None; a broken tick names none."""
    try:
        target: object = policy.on_tick(ctx)
    except Exception as exc:
        problem = f"on_tick raised {_one_line(exc)}"
    else:
        if target is None or isinstance(target, str):
            return target
        problem = f"on_tick returned {_describe(target)}, not a model name or None"
    effects.append(PolicyError(policy_name(policy), "on_tick", problem, now))
    return None


def bad_victims(
    policy: SwitchPolicy, target: str, problem: str, now: float, effects: list[SchedulerEffect]
) -> None:
    """A SwitchNow whose own `evict` list cannot be followed: the default victims are taken."""
    detail = f"on_pending returned SwitchNow for {target} with evict that {problem}"
    effects.append(PolicyError(policy_name(policy), "on_pending", detail, now))


def recheck(now: float, seconds: float) -> float:
    """When to ask again after Defer(seconds). A positive wait always moves time forward: one
    too small for `now` to notice (a quantum's last 1e-15 s) would otherwise ask again at the
    same instant, for ever."""
    at = now + max(seconds, 0.0)
    return math.nextafter(now, math.inf) if seconds > 0 and at <= now else at


def _well_formed(decision: PolicyDecision) -> bool:
    """A Defer's seconds must be a number (NaN would make every deadline NaN); a SwitchNow's
    evict None or a sequence of names."""
    if isinstance(decision, SwitchNow):
        evict: object = decision.evict
        return evict is None or (
            isinstance(evict, tuple | list) and all(isinstance(name, str) for name in evict)
        )
    if not isinstance(decision, Defer):
        return True
    seconds: object = decision.seconds
    return isinstance(seconds, int | float) and not math.isnan(seconds)


def _not_a_decision(decision: object) -> str:
    """What is wrong with a policy's answer to on_pending."""
    if isinstance(decision, Defer):
        return f"on_pending returned Defer({decision.seconds!r}), whose seconds are not a number"
    if isinstance(decision, SwitchNow):
        return f"on_pending returned SwitchNow(evict={decision.evict!r:.60}), not a list of names"
    return f"on_pending returned {_describe(decision)}, not SwitchNow, Defer or Skip"


def _describe(value: object) -> str:
    return "None" if value is None else f"a {type(value).__name__} ({value!r:.60})"


def _one_line(exc: Exception) -> str:
    """The exception as a traceback's last line says it: `ValueError: boom`."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
