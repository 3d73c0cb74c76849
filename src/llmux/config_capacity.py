"""The capacity part of a config: `resources`, each model's `needs` and `persistent`, and a
`preload` list, checked so that a model that can never wake is a start-up error, not an
eviction loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from llmux.core.capacity import Capacity


class _Model(Protocol):
    @property
    def needs(self) -> Mapping[str, float] | None: ...

    @property
    def persistent(self) -> bool: ...


def _capacity_of(models: Mapping[str, _Model], resources: Mapping[str, float] | None) -> Capacity:
    """The capacity the scheduler runs with (one model at a time without `resources`)."""
    persistent = [name for name, model in models.items() if model.persistent]
    if resources is None:
        return Capacity.single(models, persistent)
    return Capacity(
        dict(resources),
        {name: dict(model.needs or {}) for name, model in models.items()},
        frozenset(persistent),
    )


def capacity_problem(
    models: Mapping[str, _Model],
    resources: Mapping[str, float] | None,
    preload: Sequence[str],
) -> str | None:
    """What is wrong with the capacity part of a config, as "field: detail", or None."""
    for name, model in models.items():
        if resources is None and model.needs is not None:
            return f"models.{name}.needs: declare the top-level `resources` it draws on first"
        if resources is not None and model.needs is None:
            return (
                f"models.{name}.needs: with `resources` declared, every model says what it "
                f"needs of them ({{}} for nothing)"
            )
    capacity = _capacity_of(models, resources)
    for name in models:
        why = capacity.never_fits(name)
        if why is not None:
            return f"models.{name}.needs: it can never wake: {why}"
    for name in preload:
        if name not in models:
            return f"preload: {name!r} is not a configured model"
    seen = list(dict.fromkeys(preload))
    if len(seen) != len(preload):
        return "preload: a model is listed twice"
    over = capacity.over(preload)
    if over:
        resource, used, total = over[0]
        return (
            f"preload: {', '.join(preload)} cannot be awake at once "
            f"({resource}: {used:g} needed of {total:g})"
        )
    return None
