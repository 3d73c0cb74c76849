"""Before llmux serves: probe the models that have an `alive` hook and act on the plan.

The decision (which awake model to adopt, which to put to sleep) is `core.startup`'s; this
shell only runs the probes and the sleeps it asks for, in parallel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from llmux.actors import ModelActor, SchedulerActor
from llmux.build import settings_from_config
from llmux.config import Config
from llmux.core.messages import Adopt, Hook, ManualWake
from llmux.core.startup import plan_startup
from llmux.hooks import HookRunner
from llmux.observability.logs import log_event
from llmux.observability.telemetry import Telemetry


async def adopt_awake_models(
    config: Config,
    hooks: HookRunner,
    actors: Mapping[str, ModelActor],
    scheduler: SchedulerActor,
    telemetry: Telemetry,
) -> None:
    """Probe, adopt the awake models that fit, put the rest to sleep, preload, before serving."""
    alive: dict[str, bool] = {}

    async def probe(name: str) -> None:
        alive[name] = (await hooks(name, Hook.ALIVE)).ok

    async def sleep_now(name: str) -> None:
        telemetry.hook_finished(name, Hook.SLEEP, await hooks(name, Hook.SLEEP))

    async with trio.open_nursery() as probes:
        for name, model in config.models.items():
            if model.alive is not None:
                probes.start_soon(probe, name)
    capacity = settings_from_config(config).capacity(config.models)
    plan = plan_startup(list(config.models), alive, capacity, config.preload_list())
    async with trio.open_nursery() as sleepers:
        for name in plan.put_to_sleep:
            log_event(
                "startup_sleep",
                f"{name} was awake at start-up but does not fit beside "
                f"{', '.join(plan.adopt)}: putting it to sleep",
                level=logging.WARNING,
                model=name,
            )
            sleepers.start_soon(sleep_now, name)
    for name in plan.adopt:
        actors[name].post(Adopt("alive hook succeeded at start-up"))
    if plan.adopt:
        # Serve nothing before the scheduler knows: a request for another model must not
        # find the resources looking free.
        adopted = set(plan.adopt)
        await scheduler.wait_for(lambda status: adopted <= set(status.awake))
    for name in plan.preload:
        scheduler.post(ManualWake(name, "preload"))
