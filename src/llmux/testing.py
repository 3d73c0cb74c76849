"""Property testing for llmux and for switch policies: strategies, invariants, conformance.

A policy author writes, in their own pytest file::

    from llmux.testing import policy_conformance
    from mypolicies import MyPolicy

    TestMyPolicy = policy_conformance(MyPolicy, min_active=5.0)

and gets a Hypothesis state machine that runs `MyPolicy` inside the real scheduler and model
cores (`llmux.core.world.World`, the same code the server runs) while requests arrive in
bursts, time passes, clients hang up and hooks fail, checking every invariant below after
every step and at every effect. llmux's own property suite (`tests/properties/`) is built
from this module too.

The invariants (`InvariantViolation.invariant` names the one that broke):

- ``capacity``: for every resource, the needs of the models outside Sleeping (Waking,
  Active, Draining, SleepingDown) sum to at most its capacity, checked at every lifecycle
  transition, in the order the cores took them. Without declared resources every model
  needs the whole of one implicit resource: at most one model awake (the rule was called
  ``single-awake`` then, and `SINGLE_AWAKE` still names it).
- ``eviction``: a model is evicted to make room only while it is Active and not
  persistent: never one that is Waking, Draining or SleepingDown.
- ``admission``: a request is granted only by a model that is Active.
- ``drain``: with `drain_before_switch`, a sleep hook never starts while the model has
  requests in flight, and a Draining model always has some (it is not stuck). Without it,
  the drain is immediate: Active -drain-> Draining -drained-> SleepingDown at one instant
  and the sleep hook starts with the requests still in flight; llmux does not cut or
  reject them, they keep their in-flight slot until their own `Finish`, which may come
  while the model sleeps or after it woke again.
- ``nothing-lost``: every request ends exactly once (granted then finished or withdrawn,
  rejected, or withdrawn while queued); the cores' queues and in-flight sets hold exactly
  the requests that are waiting and running, and are empty once traffic stops.
- ``no-starvation``: if the policy declares a starvation bound B (see
  `llmux.core.policy.DeclaresStarvationBound`), no request still waits B seconds after
  arriving or after the last hook failure, whichever is later.
- ``cancellation``: a withdrawn request (queued, queued at a draining model, in flight at
  a draining model, in service) leaves nothing behind in any queue or in-flight set.
- ``edges``: every transition is one that `llmux.core.lifecycle.edges()` declares.
- ``no-anomaly``: the cores never report an `Anomaly`.
- ``no-livelock``: the world never spins at one instant (e.g. a policy deferring by 0 s):
  `CheckedWorld` stops it after `max_instants_at_one_time` instants without virtual time
  advancing (or `max_steps` instants in one step).
- ``policy-errors``: the policy never raises and always returns a decision (`on_pending` a
  `SwitchNow`, `Defer` or `Skip`, `on_tick` a model name or None). The scheduler contains
  such a bug (it takes FIFO's decision for that call and reports a `PolicyError`), so a
  server survives it, but it is a bug: the violation quotes the scheduler's one-line
  detail ("on_pending returned None, not SwitchNow, Defer or Skip").

This module is the kit's public API; the code lives in `llmux.testkit` (invariants,
checked_world, schedules, conformance, profiles).
"""

from __future__ import annotations

from llmux.testkit.checked_world import CheckedWorld
from llmux.testkit.conformance import PolicyMachine, conformance_machine, policy_conformance
from llmux.testkit.invariants import (
    ADMISSION,
    CANCELLATION,
    CAPACITY,
    DRAIN,
    EDGES,
    EVICTION,
    INVARIANTS,
    NO_ANOMALY,
    NO_LIVELOCK,
    NO_STARVATION,
    NOTHING_LOST,
    POLICY_ERRORS,
    SINGLE_AWAKE,
    InvariantViolation,
    Monitor,
)
from llmux.testkit.profiles import load_profile, register_profiles
from llmux.testkit.schedules import (
    PlannedRequest,
    Schedule,
    capacity_settings,
    endless_traffic,
    hook_scripts,
    quantized,
    request_schedules,
    run_schedule,
)

__all__ = [
    "ADMISSION",
    "CANCELLATION",
    "CAPACITY",
    "DRAIN",
    "EDGES",
    "EVICTION",
    "INVARIANTS",
    "NOTHING_LOST",
    "NO_ANOMALY",
    "NO_LIVELOCK",
    "NO_STARVATION",
    "POLICY_ERRORS",
    "SINGLE_AWAKE",
    "CheckedWorld",
    "InvariantViolation",
    "Monitor",
    "PlannedRequest",
    "PolicyMachine",
    "Schedule",
    "capacity_settings",
    "conformance_machine",
    "endless_traffic",
    "hook_scripts",
    "load_profile",
    "policy_conformance",
    "quantized",
    "register_profiles",
    "request_schedules",
    "run_schedule",
]
