"""What to do with models that are already awake when llmux starts, and what to preload.

llmux may restart while models are loaded (a crash, an upgrade, a box that was used by hand).
Waking another model next to them could run the GPU out of memory, so models with an `alive`
hook are probed first and the result decides the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from llmux.core.capacity import Capacity


class StartupPlan(msgspec.Struct, frozen=True):
    adopt: tuple[str, ...]
    put_to_sleep: tuple[str, ...]
    # The preload models to wake, in order: those that fit beside the adopted ones.
    preload: tuple[str, ...] = ()


def plan_startup(
    models: Sequence[str],
    alive: Mapping[str, bool],
    capacity: Capacity | None = None,
    preload: Sequence[str] = (),
) -> StartupPlan:
    """Adopt the awake models in config order as long as they fit beside those adopted
    before them; every other awake one goes to sleep, so the capacities hold from the first
    request on. Then preload what fits beside the adopted models."""
    capacity = capacity if capacity is not None else Capacity.single(models)
    adopt: list[str] = []
    put_to_sleep: list[str] = []
    for name in models:
        if alive.get(name, False):
            (adopt if capacity.fits(name, adopt) else put_to_sleep).append(name)
    woken = list(adopt)
    for name in preload:
        if name not in woken and capacity.fits(name, woken):
            woken.append(name)
    return StartupPlan(tuple(adopt), tuple(put_to_sleep), tuple(woken[len(adopt) :]))
