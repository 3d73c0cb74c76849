"""Declared resources and what each model holds of them while it is not asleep.

A model holds its `needs` from the moment the scheduler tells it to wake until it is Sleeping
again (Waking, Active, Draining and SleepingDown all hold), so the scheduler reserves a
target's needs before its wake starts and gets a victim's back only once its sleep is over.
The rule every instant obeys, per resource: the needs of the models outside Sleeping sum to
at most the capacity.

Without declared resources every model needs one unit of one implicit resource of capacity
1 (`Capacity.single`): at most one model awake, which is llmux's behaviour before capacity.

Pure arithmetic: the scheduler core, the startup plan, the config check and the policy kit
all ask the same questions of the same object.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import msgspec

# The one resource of a deployment that declares none.
IMPLICIT_RESOURCE = "default"
# Float noise tolerated when summing needs (GiB given as 13.6 + 40.2 ...).
_TOLERANCE = 1e-9


class Capacity(msgspec.Struct, frozen=True):
    resources: Mapping[str, float]
    needs: Mapping[str, Mapping[str, float]]
    # Never evicted to make room for another model (a manual sleep, an idle sleep and the
    # shutdown still put them to sleep).
    persistent: frozenset[str] = frozenset()

    @classmethod
    def single(cls, models: Iterable[str], persistent: Iterable[str] = ()) -> Capacity:
        """Every model needs the whole of one implicit resource: one model awake at a time."""
        return cls(
            {IMPLICIT_RESOURCE: 1.0},
            {name: {IMPLICIT_RESOURCE: 1.0} for name in models},
            frozenset(persistent),
        )

    def needs_of(self, model: str) -> Mapping[str, float]:
        return self.needs.get(model, {})

    def used(self, holders: Iterable[str]) -> dict[str, float]:
        """How much of each resource `holders` hold together."""
        total = dict.fromkeys(self.resources, 0.0)
        for model in holders:
            for resource, amount in self.needs_of(model).items():
                total[resource] = total.get(resource, 0.0) + amount
        return total

    def over(self, holders: Iterable[str]) -> list[tuple[str, float, float]]:
        """The resources `holders` exceed, as (resource, used, capacity)."""
        used = self.used(holders)
        return [
            (resource, amount, self.resources.get(resource, 0.0))
            for resource, amount in used.items()
            if amount > self.resources.get(resource, 0.0) + _TOLERANCE
        ]

    def fits(self, model: str, holders: Iterable[str]) -> bool:
        """Whether `model` may wake while `holders` hold what they need."""
        return not self.over([*holders, model])

    def victims(
        self,
        target: str,
        holders: Collection[str],
        evictable: Sequence[str],
        *,
        cheapest_first: Callable[[str], tuple[float, float, str]],
    ) -> tuple[str, ...] | None:
        """The default choice of models to evict so that `target` fits beside the rest of
        `holders`: () if it fits already, None if even evicting every one of `evictable`
        would not make room.

        Victims are taken cheapest first (`cheapest_first` orders `evictable`) until the
        target fits, then any victim whose stay still leaves room is spared again, dearest
        first: a small model taken early is not evicted when a big one freed enough alone.
        """
        if self.fits(target, holders):
            return ()
        ordered = sorted(evictable, key=cheapest_first)
        chosen: list[str] = []
        for candidate in ordered:
            chosen.append(candidate)
            if self.fits(target, [m for m in holders if m not in chosen]):
                break
        else:
            return None
        for candidate in reversed(list(chosen)):
            spared = [m for m in chosen if m != candidate]
            if self.fits(target, [m for m in holders if m not in spared]):
                chosen = spared
        return tuple(chosen)

    def never_fits(self, model: str) -> str | None:
        """Why `model` can never wake (alone, or beside the persistent models), or None."""
        for resource in self.needs_of(model):
            if resource not in self.resources:
                return f"needs {resource!r}, which is not among the resources"
        beside = sorted(self.persistent - {model})
        for resource, used, capacity in self.over([model]):
            return f"needs {used:g} of {resource!r}, whose capacity is {capacity:g}"
        for resource, used, capacity in self.over([model, *beside]):
            own = self.needs_of(model).get(resource, 0.0)
            return (
                f"needs {own:g} of {resource!r}, but the persistent {', '.join(beside)} "
                f"hold {used - own:g} of its {capacity:g}"
            )
        return None
