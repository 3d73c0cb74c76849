"""Before llmux serves: probe the models that have an `alive` hook and act on the plan.

The decision (which awake model to adopt, which to put to sleep) is `core.startup`'s; this
shell only runs the probes and the sleeps it asks for, in parallel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from llmux.actors import ModelActor, SchedulerActor
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
    """Probe, put extra awake models to sleep, adopt one (or preload), before serving."""
    alive: dict[str, bool] = {}

    async def probe(name: str) -> None:
        alive[name] = (await hooks(name, Hook.ALIVE)).ok

    async def sleep_now(name: str) -> None:
        telemetry.hook_finished(name, Hook.SLEEP, await hooks(name, Hook.SLEEP))

    async with trio.open_nursery() as probes:
        for name, model in config.models.items():
            if model.alive is not None:
                probes.start_soon(probe, name)
    plan = plan_startup(list(config.models), alive)
    async with trio.open_nursery() as sleepers:
        for name in plan.put_to_sleep:
            log_event(
                "startup_sleep",
                f"{name} was awake at start-up besides {plan.adopt}: putting it to sleep",
                level=logging.WARNING,
                model=name,
            )
            sleepers.start_soon(sleep_now, name)
    if plan.adopt is None and config.preload is not None:
        scheduler.post(ManualWake(config.preload, "preload"))
    if plan.adopt is not None:
        actors[plan.adopt].post(Adopt("alive hook succeeded at start-up"))
        # Serve nothing before the scheduler knows: a request for another model must not
        # find the GPU looking free.
        adopted = plan.adopt
        await scheduler.wait_for(lambda status: status.active == adopted)
