"""What to do with models that are already awake when llmux starts.

llmux may restart while a model is loaded (a crash, an upgrade, a box that was used by hand).
Waking another model next to it could run the GPU out of memory, so models with an `alive`
hook are probed first and the result decides the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec


class StartupPlan(msgspec.Struct, frozen=True):
    adopt: str | None
    put_to_sleep: tuple[str, ...]


def plan_startup(models: Sequence[str], alive: Mapping[str, bool]) -> StartupPlan:
    """Adopt the first awake model in config order; every other awake one goes to sleep, so
    the single-awake rule holds from the first request on."""
    awake = [name for name in models if alive.get(name, False)]
    if not awake:
        return StartupPlan(None, ())
    return StartupPlan(awake[0], tuple(awake[1:]))
