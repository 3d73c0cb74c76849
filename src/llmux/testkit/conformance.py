"""The conformance state machine and `policy_conformance`, the test case a policy author
subclasses."""

from __future__ import annotations

import dataclasses
import unittest
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from llmux.core.messages import (
    Hook,
)
from llmux.core.model import ModelCore
from llmux.core.policy import SwitchPolicy
from llmux.core.scheduler import SchedulerCore
from llmux.core.world import HookScript, Settings

# ---- the conformance state machine ---------------------------------------------------------
from llmux.testkit.checked_world import CheckedWorld
from llmux.testkit.invariants import QUANTUM
from llmux.testkit.schedules import (
    PlannedRequest,
    capacity_settings,
    endless_traffic,
    hook_scripts,
    quantized,
    run_schedule,
)


@dataclasses.dataclass(frozen=True)
class _Config:
    policy_factory: Callable[[], SwitchPolicy]
    models: tuple[str, ...]
    max_service: float
    max_hook_secs: float
    min_active: float
    request_timeout: float | Literal["any"] | None
    drain_before_switch: bool | None
    core_class: type[ModelCore]


class PolicyMachine(RuleBasedStateMachine):
    """The rules and invariants; `conformance_machine` makes a subclass per configuration."""

    config: ClassVar[_Config]

    def __init__(self) -> None:
        super().__init__()
        self.checked: CheckedWorld | None = None
        self.broken = False

    @property
    def world(self) -> CheckedWorld:
        assert self.checked is not None
        return self.checked

    def _guard(self, step: Callable[[], object]) -> None:
        try:
            step()
        except BaseException:
            self.broken = True
            raise

    @invariant()
    def every_invariant_holds(self) -> None:
        if self.checked is not None:
            self._guard(self.checked.check)

    def teardown(self) -> None:
        checked = self.checked
        if checked is None or self.broken:
            return
        checked.settle()
        target(checked.monitor.max_wait_ratio, label="max wait / starvation bound")
        for where in checked.cancels:
            event(f"cancelled while {where}")


def conformance_machine(
    policy_class: Callable[..., SwitchPolicy],
    *,
    policy_options: Mapping[str, Any] | None = None,
    models: Sequence[str] = ("a", "b", "c"),
    max_service: float = 3.0,
    max_hook_secs: float = 2.0,
    min_active: float = 0.0,
    request_timeout: float | Literal["any"] | None = "any",
    drain_before_switch: bool | None = None,
    core_class: type[ModelCore] = ModelCore,
    capacities: bool = True,
    scheduler_class: type[SchedulerCore] = SchedulerCore,
) -> type[PolicyMachine]:
    """The Hypothesis state machine that `policy_conformance` runs.

    `request_timeout="any"` and `drain_before_switch=None` let each example choose; with
    `capacities`, each example also draws resources, needs and persistent models (or none:
    one model awake at a time), see `capacity_settings`. `core_class` and `scheduler_class`
    run deliberately broken cores (the kit's own teeth tests).
    """
    options = dict(policy_options or {})
    config = _Config(
        policy_factory=lambda: policy_class(**options),
        models=tuple(models),
        max_service=max_service,
        max_hook_secs=max_hook_secs,
        min_active=min_active,
        request_timeout=request_timeout,
        drain_before_switch=drain_before_switch,
        core_class=core_class,
    )
    cycle = min_active + max_service + 2 * max_hook_secs
    model_names = st.sampled_from(config.models)
    services = quantized(0.0, max_service)
    drains = st.booleans() if drain_before_switch is None else st.just(drain_before_switch)
    timeouts: st.SearchStrategy[float | None] = (
        st.none() | quantized(QUANTUM, 3 * cycle)
        if request_timeout == "any"
        else st.just(request_timeout)
    )

    capacity_draws = capacity_settings(config.models) if capacities else st.just({})

    def has_live_requests(self: PolicyMachine) -> bool:
        return self.checked is not None and bool(self.checked.world.live_requests())

    class Machine(PolicyMachine):
        @initialize(
            hooks=st.fixed_dictionaries({m: hook_scripts(max_hook_secs) for m in config.models}),
            drain=drains,
            timeout=timeouts,
            capacity=capacity_draws,
        )
        def start(
            self,
            hooks: dict[str, HookScript],
            drain: bool,
            timeout: float | None,
            capacity: dict[str, Any],
        ) -> None:
            settings = Settings(
                request_timeout=timeout,
                drain_before_switch=drain,
                min_active=min_active,
                **capacity,
            )
            self.checked = CheckedWorld(
                hooks,
                config.policy_factory(),
                settings,
                max_service=max_service,
                core_class=config.core_class,
                scheduler_class=scheduler_class,
            )

        @rule(model=model_names, service=services)
        def arrive(self, model: str, service: float) -> None:
            world = self.world
            self._guard(lambda: world.submit(model, world.world.now, service))
            self._guard(lambda: world.advance(0.0))

        @rule(
            model=model_names,
            count=st.integers(2, 24),
            gap=quantized(0.0, max_service),
            service=services,
        )
        def stream(self, model: str, count: int, gap: float, service: float) -> None:
            """A burst of `count` requests, one every `gap` seconds, from now on."""
            world = self.world
            for i in range(count):
                world.submit(model, world.world.now + i * gap, service)
            self._guard(lambda: world.advance(0.0))

        @rule(dt=quantized(0.0, cycle))
        def advance(self, dt: float) -> None:
            self._guard(lambda: self.world.advance(dt))

        @precondition(has_live_requests)
        @rule(pick=st.integers(0, 63))
        def cancel(self, pick: int) -> None:
            live = self.world.world.live_requests()
            self._guard(lambda: self.world.cancel(live[pick % len(live)].req_id))

        @rule(model=model_names, hook=st.sampled_from(Hook))
        def fail_next_hook(self, model: str, hook: Hook) -> None:
            self.world.fail_next_hook(model, hook)

        @rule()
        def quiesce(self) -> None:
            """Traffic stops; everything must end, within the bound if one is declared."""
            self._guard(self.world.settle)

    name = getattr(policy_class, "__name__", "Policy")
    Machine.config = config
    Machine.__name__ = Machine.__qualname__ = f"{name}Conformance"
    return Machine


def policy_conformance(
    policy_class: Callable[..., SwitchPolicy],
    *,
    policy_options: Mapping[str, Any] | None = None,
    models: Sequence[str] = ("a", "b", "c"),
    max_service: float = 3.0,
    max_hook_secs: float = 2.0,
    min_active: float = 0.0,
    request_timeout: float | Literal["any"] | None = "any",
    drain_before_switch: bool | None = None,
    core_class: type[ModelCore] = ModelCore,
    hypothesis_settings: settings | None = None,
    capacities: bool = True,
) -> type[unittest.TestCase]:
    """A unittest/pytest test case class holding `policy_class` to every llmux invariant.

    `policy_options` go to the policy's constructor (as the config file's extra `policy`
    keys would). `min_active`, `request_timeout` and `drain_before_switch` are the
    deployment's settings: by default every example picks a timeout (or none) and a drain
    mode. `max_service` and `max_hook_secs` bound the generated workload, and are what the
    policy's `starvation_bound` is given. Hypothesis settings come from the loaded profile
    (see `register_profiles`) unless `hypothesis_settings` is given.

    The class has two tests: the state machine (`test_state_machine`), and
    `test_endless_traffic_does_not_starve_another_model` (only meaningful with a declared
    bound: one model always busy, one request for another). With `capacities` (the
    default) both draw resources, needs and persistent models for each example.
    """
    machine = conformance_machine(
        policy_class,
        policy_options=policy_options,
        models=models,
        max_service=max_service,
        max_hook_secs=max_hook_secs,
        min_active=min_active,
        request_timeout=request_timeout,
        drain_before_switch=drain_before_switch,
        core_class=core_class,
        capacities=capacities,
    )
    config = machine.config
    busy, other = config.models[0], config.models[1]

    def current_settings() -> settings:
        base = hypothesis_settings if hypothesis_settings is not None else settings()
        return settings(base, deadline=None, suppress_health_check=list(HealthCheck))

    capacity_draws = capacity_settings(config.models) if capacities else st.just({})
    Case = tuple[dict[str, HookScript], list[PlannedRequest], dict[str, Any]]

    @st.composite
    def traffic_cases(draw: st.DrawFn) -> Case:
        hooks = draw(st.fixed_dictionaries({m: hook_scripts(max_hook_secs) for m in models}))
        schedule = draw(endless_traffic(busy, other, max_service=max_service))
        return hooks, schedule, draw(capacity_draws)

    class ConformanceTest(machine.TestCase):  # type: ignore[name-defined,misc]
        def test_state_machine(self) -> None:
            run_state_machine_as_test(machine, settings=current_settings())

        def test_endless_traffic_does_not_starve_another_model(self) -> None:
            drain = drain_before_switch if drain_before_switch is not None else True
            timeout = None if request_timeout == "any" else request_timeout

            @current_settings()
            @given(traffic_cases())
            def check(case: Case) -> None:
                hooks, schedule, capacity = case
                checked = run_schedule(
                    config.policy_factory(),
                    hooks,
                    schedule,
                    Settings(timeout, drain, min_active, **capacity),
                    max_service=max_service,
                    core_class=core_class,
                )
                target(checked.monitor.max_wait_ratio, label="max wait / starvation bound")

            check()

    ConformanceTest.__name__ = ConformanceTest.__qualname__ = f"Test{machine.__name__}"
    return ConformanceTest
