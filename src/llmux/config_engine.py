"""The `engine` block of a model's config, and the hooks it compiles into (llmux.engines)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from llmux.core.messages import Hook
from llmux.engines import engine_hook

if TYPE_CHECKING:
    from llmux.config import ModelConfig

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class EngineConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A declared engine (see llmux.engines): its process is started on wake and stopped on
    sleep, and is alive while its check endpoint answers 200."""

    type: Literal["command", "llama.cpp"]
    # Run with `sh -c`; ${PORT} and ${MODEL} are the model's port and name.
    command: Annotated[str, msgspec.Meta(min_length=1)]
    check_path: Annotated[str, msgspec.Meta(pattern="^/")] = "/health"
    env: dict[str, str] = {}
    stop_timeout_secs: PositiveSeconds = 10.0
    # vLLM's sleep levels; a process engine has none (it is stopped and started).
    sleep_level: Literal[1, 2] | None = None


def with_engine_hooks(name: str, model: ModelConfig) -> ModelConfig | str:
    """The model with its engine's hooks filled in where the config gives none, or what is
    wrong, as "field: detail"."""
    engine = model.engine
    if engine is None:
        if model.wake is None or model.sleep is None:
            missing = "wake" if model.wake is None else "sleep"
            return (
                f"models.{name}.{missing}: required (a shell command), unless the model "
                f"declares an `engine`"
            )
        return model
    if engine.sleep_level is not None:
        return (
            f"models.{name}.engine.sleep_level: a {engine.type!r} engine has no sleep levels "
            f"(its process is stopped on sleep and started on wake)"
        )
    hooks = {
        hook: engine_hook(
            hook,
            model=name,
            port=model.port,
            command=engine.command,
            check_path=engine.check_path,
            env=engine.env,
            stop_timeout_secs=engine.stop_timeout_secs,
        )
        for hook in Hook
    }
    return msgspec.structs.replace(
        model,
        wake=model.wake if model.wake is not None else hooks[Hook.WAKE],
        sleep=model.sleep if model.sleep is not None else hooks[Hook.SLEEP],
        alive=model.alive if model.alive is not None else hooks[Hook.ALIVE],
    )
