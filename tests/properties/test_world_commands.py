"""An operator's commands and shutdown, mixed into arbitrary traffic: manual wake and sleep,
pin and unpin, idle sleep, SIGTERM. They override the policy, so no starvation bound is
claimed here; every other invariant must hold (single-awake, admission, drain, nothing lost,
cancellation, edges, no anomaly), and after a shutdown every model ends asleep."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from llmux.core.messages import ManualSleep, ManualWake, Pin, Shutdown
from llmux.core.policy import BoundInputs
from llmux.core.world import HookScript, Settings
from llmux.policies.fifo import FifoPolicy
from llmux.testing import CheckedWorld, PolicyMachine, hook_scripts, quantized

MODELS = ("a", "b", "c")
MAX_SERVICE = 2.0


class OperatedFifo(FifoPolicy):
    """FIFO, minus its bound: an operator may hold the GPU as long as they like."""

    def starvation_bound(self, inputs: BoundInputs) -> float | None:  # type: ignore[override]
        return None


class OperatorMachine(PolicyMachine):
    shut_down = False

    @initialize(
        hooks=st.fixed_dictionaries({m: hook_scripts(1.5, failures=True) for m in MODELS}),
        drain=st.booleans(),
        idle=st.none() | quantized(0.5, 5.0),
    )
    def start(self, hooks: dict[str, HookScript], drain: bool, idle: float | None) -> None:
        settings = Settings(drain_before_switch=drain, idle_sleep=idle)
        self.checked = CheckedWorld(hooks, OperatedFifo(), settings, max_service=MAX_SERVICE)

    @rule(model=st.sampled_from(MODELS), service=quantized(0.0, MAX_SERVICE))
    def arrive(self, model: str, service: float) -> None:
        world = self.world
        self._guard(lambda: world.submit(model, world.world.now, service))
        self._guard(lambda: world.advance(0.0))

    @rule(dt=quantized(0.0, 6.0))
    def advance(self, dt: float) -> None:
        self._guard(lambda: self.world.advance(dt))

    @precondition(lambda self: self.checked is not None and self.world.world.live_requests())
    @rule(pick=st.integers(0, 63))
    def cancel(self, pick: int) -> None:
        live = self.world.world.live_requests()
        self._guard(lambda: self.world.cancel(live[pick % len(live)].req_id))

    @rule(model=st.sampled_from(MODELS))
    def wake(self, model: str) -> None:
        self._guard(lambda: self.world.command(ManualWake(model)))

    @rule(model=st.sampled_from(MODELS))
    def sleep(self, model: str) -> None:
        self._guard(lambda: self.world.command(ManualSleep(model)))

    @rule(model=st.none() | st.sampled_from(MODELS))
    def pin(self, model: str | None) -> None:
        self._guard(lambda: self.world.command(Pin(model)))

    @precondition(lambda self: not self.shut_down)
    @rule()
    def shutdown(self) -> None:
        self.shut_down = True
        self._guard(lambda: self.world.command(Shutdown()))

    def teardown(self) -> None:
        super().teardown()
        if self.checked is None or self.broken:
            return
        scheduler = self.world.world.scheduler
        if self.shut_down:
            assert scheduler.is_quiet(), f"after shutdown, still awake: {scheduler.awake()}"
        elif scheduler.pinned is not None:
            pinned = self.world.world.models[scheduler.pinned]
            assert pinned.state == "Active", f"pinned to {scheduler.pinned}, now {pinned.state}"


TestOperatorCommands = OperatorMachine.TestCase
