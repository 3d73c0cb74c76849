"""Several models awake within declared resources: the scheduler core on a World, the pure
capacity arithmetic, the start-up plan and the config's capacity checks."""

from __future__ import annotations

from typing import Any

import pytest

from llmux.config import ConfigError, parse_config
from llmux.core.capacity import Capacity
from llmux.core.messages import ResourcesUsed, SwitchStarted
from llmux.core.model import ACTIVE, SLEEPING
from llmux.core.policy import PendingContext, PolicyDecision, SwitchNow
from llmux.core.startup import plan_startup
from llmux.core.world import HookScript, Settings, World
from llmux.policies.fifo import FifoPolicy

# An 80 GiB card: an embedding model and a 7B chat model fit beside a 40 GiB model, a 70B does not.
GPU = {"gpu0": 80.0}
NEEDS = {
    "embed": {"gpu0": 8.0},
    "chat": {"gpu0": 16.0},
    "mid": {"gpu0": 40.0},
    "big": {"gpu0": 70.0},
}


def _world(
    policy: Any = None,
    *,
    persistent: frozenset[str] = frozenset(),
    effects: list[object] | None = None,
) -> World:
    hooks = {name: HookScript(wake_secs=2.0, sleep_secs=1.0) for name in NEEDS}
    settings = Settings(resources=GPU, needs=NEEDS, persistent=persistent)
    return World(
        hooks,
        policy or FifoPolicy(),
        settings,
        on_effect=effects.append if effects is not None else None,
    )


def _states(world: World) -> dict[str, str]:
    return {name: core.state for name, core in world.models.items()}


def test_models_that_fit_are_awake_together_and_each_wake_disturbs_nobody() -> None:
    world = _world()
    for at, model in enumerate(["embed", "chat", "mid"]):
        world.submit(model, at=at * 10.0, service=1.0)
    world.run(until=40.0)
    assert {m for m, s in _states(world).items() if s == ACTIVE} == {"embed", "chat", "mid"}
    assert [h for h in world.hook_runs if h[2].value == "sleep"] == []
    assert all(r.finished_at is not None for r in world.requests.values())
    assert world.scheduler.status().resources[0].used == 64.0


def test_a_model_that_does_not_fit_evicts_only_what_it_must_and_the_rest_keep_serving() -> None:
    effects: list[object] = []
    world = _world(effects=effects)
    world.submit("embed", at=0.0, service=1.0)
    world.submit("mid", at=10.0, service=1.0)
    world.submit("chat", at=20.0, service=1.0)
    world.run(until=30.0)
    # big needs 70: evicting mid (40) frees enough beside embed (8) + chat (16)? 8+16+70 > 80,
    # so two must go; the cheapest first, then spared where room allows.
    world.submit("big", at=30.0, service=1.0)
    # While big's switch runs, embed keeps answering at once.
    during = world.submit("embed", at=30.5, service=0.5)
    world.run(until=60.0)
    started = [e for e in effects if isinstance(e, SwitchStarted) and e.to_model == "big"]
    assert len(started) == 1
    victims = set(started[0].evict)
    assert "big" not in victims and victims, started
    kept = {"embed", "chat", "mid"} - victims
    assert sum(NEEDS[m]["gpu0"] for m in kept) + 70 <= 80
    assert world.requests[during].granted_at == 30.5, "a resident model was held up"
    assert _states(world)["big"] == ACTIVE
    for victim in victims:
        assert _states(world)[victim] == SLEEPING


def test_a_persistent_model_is_never_evicted_even_when_it_is_the_cheapest() -> None:
    effects: list[object] = []
    world = _world(persistent=frozenset({"embed"}), effects=effects)
    world.submit("embed", at=0.0, service=0.0)
    world.submit("mid", at=10.0, service=0.0)
    world.run(until=20.0)
    world.submit("big", at=20.0, service=1.0)
    world.run(until=40.0)
    assert _states(world) == {"embed": ACTIVE, "chat": SLEEPING, "mid": SLEEPING, "big": ACTIVE}
    started = [e for e in effects if isinstance(e, SwitchStarted) and e.to_model == "big"]
    assert started[0].evict == ("mid",)


class _Evicts(FifoPolicy):
    def __init__(self, evict: tuple[str, ...]) -> None:
        self.evict = evict
        self.seen: list[PendingContext] = []

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        self.seen.append(ctx)
        return SwitchNow("mine", evict=self.evict) if ctx.evict else SwitchNow("fits")


def _three_awake_then_big(policy: _Evicts) -> tuple[World, list[object]]:
    effects: list[object] = []
    world = _world(policy, effects=effects)
    for at, model in enumerate(["embed", "chat", "mid"]):
        world.submit(model, at=at * 10.0, service=0.0)
    world.run(until=30.0)
    world.submit("big", at=30.0, service=0.0)
    world.run(until=60.0)
    return world, effects


def test_a_policy_may_name_its_own_victims() -> None:
    policy = _Evicts(("embed", "chat", "mid"))
    world, effects = _three_awake_then_big(policy)
    started = [e for e in effects if isinstance(e, SwitchStarted) and e.to_model == "big"]
    assert started[0].evict == ("embed", "chat", "mid")
    assert _states(world)["embed"] == SLEEPING and world.policy_errors == []
    ctx = policy.seen[-1]
    assert ctx.target_model == "big" and ctx.active_model == ctx.evict[0]
    assert set(ctx.residents) == {"embed", "chat", "mid"}
    assert all(r.evictable for r in ctx.residents.values()) and ctx.free == {"gpu0": 16.0}


@pytest.mark.parametrize(
    ("evict", "problem"),
    [(("embed",), "too little room"), (("nobody",), "not a model"), (("big",), "target")],
)
def test_victims_a_policy_cannot_have_are_a_policy_error_and_the_default_is_taken(
    evict: tuple[str, ...], problem: str
) -> None:
    world, effects = _three_awake_then_big(_Evicts(evict))
    assert len(world.policy_errors) == 1 and problem in world.policy_errors[0].detail
    assert _states(world)["big"] == ACTIVE
    assert not [e for e in effects if isinstance(e, ResourcesUsed) and e.usage[0].used > 80]


def test_resources_used_follow_wakes_and_sleeps() -> None:
    effects: list[object] = []
    world = _world(effects=effects)
    world.submit("mid", at=0.0, service=0.0)
    world.submit("big", at=10.0, service=0.0)
    world.run(until=30.0)
    used = [e.usage[0].used for e in effects if isinstance(e, ResourcesUsed)]
    # mid reserved at its wake, released after its sleep, then big reserved.
    assert used == [40.0, 0.0, 70.0]


# ---- the arithmetic ------------------------------------------------------------------------


def test_victims_are_pruned_so_a_small_model_taken_first_is_spared() -> None:
    capacity = Capacity({"g": 10.0}, {"s": {"g": 2.0}, "l": {"g": 7.0}, "t": {"g": 6.0}})
    order = {"s": 0, "l": 1}
    victims = capacity.victims(
        "t", ["s", "l"], ["s", "l"], cheapest_first=lambda m: (order[m], 0.0, m)
    )
    assert victims == ("l",)


def test_no_victims_can_make_room_when_the_holders_may_not_be_evicted() -> None:
    capacity = Capacity({"g": 10.0}, {"a": {"g": 6.0}, "b": {"g": 6.0}})
    assert capacity.victims("b", ["a"], [], cheapest_first=lambda m: (0.0, 0.0, m)) is None


def test_the_implicit_resource_is_one_model_at_a_time() -> None:
    capacity = Capacity.single(["a", "b"])
    assert capacity.fits("a", []) and not capacity.fits("b", ["a"])


def test_start_up_adopts_what_fits_and_preloads_beside_it() -> None:
    capacity = Capacity(GPU, NEEDS)
    alive = {"mid": True, "big": True, "chat": True}
    plan = plan_startup(list(NEEDS), alive, capacity, ["embed", "big"])
    assert plan.adopt == ("chat", "mid") and plan.put_to_sleep == ("big",)
    assert plan.preload == ("embed",)


# ---- the config ----------------------------------------------------------------------------


def _config(models: dict[str, dict[str, Any]], **top: Any) -> Any:
    full = {
        name: {"port": 9100 + i, "wake": "true", "sleep": "true", **fields}
        for i, (name, fields) in enumerate(models.items())
    }
    return parse_config({"models": full, **top})


def test_a_config_with_resources_needs_and_a_preload_list() -> None:
    config = _config(
        {"embed": {"needs": {"gpu0": 8}, "persistent": True}, "big": {"needs": {"gpu0": 70}}},
        resources={"gpu0": 80},
        preload=["embed", "big"],
    )
    assert config.preload_list() == ["embed", "big"]
    assert config.models["embed"].persistent and config.resources == {"gpu0": 80.0}


@pytest.mark.parametrize(
    ("models", "top", "message"),
    [
        (
            {"a": {"needs": {"gpu0": 90}}},
            {"resources": {"gpu0": 80}},
            "models.a.needs: it can never wake: needs 90 of 'gpu0', whose capacity is 80",
        ),
        (
            {"e": {"needs": {"gpu0": 20}, "persistent": True}, "b": {"needs": {"gpu0": 70}}},
            {"resources": {"gpu0": 80}},
            "models.b.needs: it can never wake: needs 70 of 'gpu0', but the persistent e "
            "hold 20 of its 80",
        ),
        (
            {"a": {"needs": {"gpu1": 1}}},
            {"resources": {"gpu0": 80}},
            "models.a.needs: it can never wake: needs 'gpu1', which is not among the resources",
        ),
        ({"a": {"needs": {"gpu0": 1}}}, {}, "models.a.needs: declare the top-level `resources`"),
        ({"a": {}}, {"resources": {"gpu0": 80}}, "models.a.needs: with `resources` declared"),
        (
            {"a": {"needs": {"g": 50}}, "b": {"needs": {"g": 50}}},
            {"resources": {"g": 80}, "preload": ["a", "b"]},
            "preload: a, b cannot be awake at once (g: 100 needed of 80)",
        ),
        ({"a": {}, "b": {}}, {"preload": ["a", "b"]}, "preload: a, b cannot be awake at once"),
        ({"a": {}}, {"preload": ["zz"]}, "preload: 'zz' is not a configured model"),
    ],
)
def test_impossible_capacities_are_one_line_config_errors(
    models: dict[str, dict[str, Any]], top: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _config(models, **top)
    assert message in str(info.value) and "\n" not in str(info.value)


# ---- switches at once ----------------------------------------------------------------------

TWO_GPUS = {"gpu0": 80.0, "gpu1": 80.0}


def _two_gpu_world(needs: dict[str, dict[str, float]]) -> World:
    hooks = {name: HookScript(wake_secs=4.0, sleep_secs=1.0) for name in needs}
    return World(hooks, FifoPolicy(), Settings(resources=TWO_GPUS, needs=needs))


def _wakes(world: World) -> dict[str, float]:
    return {model: at for at, model, hook in world.hook_runs if hook.value == "wake"}


def test_switches_on_disjoint_resources_run_at_once() -> None:
    # One model per GPU: both wakes start at once, and a third model's switch on gpu1 runs
    # while gpu0's model is still waking.
    world = _two_gpu_world(
        {"a": {"gpu0": 70.0}, "b": {"gpu1": 70.0}, "c": {"gpu1": 70.0}},
    )
    world.submit("a", at=0.0, service=1.0)
    world.submit("b", at=0.0, service=1.0)
    world.run(until=10.0)
    assert _wakes(world) == {"a": 0.0, "b": 0.0}
    world.submit("a", at=10.0, service=0.0)
    world.submit("c", at=10.0, service=1.0)
    world.run(until=30.0)
    # c evicted b on gpu1 (sleep 1 s, then its 4 s wake) while a served on gpu0 throughout.
    assert _wakes(world)["c"] == 11.0
    assert world.requests[2].granted_at == 10.0
    assert _states(world) == {"a": ACTIVE, "b": SLEEPING, "c": ACTIVE}


def test_contending_switches_are_ordered_and_the_oldest_waiter_is_not_overtaken() -> None:
    # t (tensor-parallel, both GPUs) waits behind a's wake on gpu0; b, younger and on gpu1
    # only, must not take gpu1 from under it meanwhile.
    world = _two_gpu_world(
        {"a": {"gpu0": 70.0}, "t": {"gpu0": 40.0, "gpu1": 40.0}, "b": {"gpu1": 70.0}}
    )
    world.submit("a", at=0.0, service=0.0)
    world.submit("t", at=1.0, service=0.0)
    world.submit("b", at=2.0, service=0.0)
    world.run(until=60.0)
    wakes = _wakes(world)
    # a wakes at 0 (until 4); t evicts a (sleep 4-5) and wakes 5-9; b evicts t (9-10), 10-14.
    assert wakes == {"a": 0.0, "t": 5.0, "b": 10.0}
    assert all(r.finished_at is not None for r in world.requests.values())
