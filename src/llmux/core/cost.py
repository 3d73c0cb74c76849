"""Switch-cost estimates: an exponential moving average per (from, to) direction."""

from __future__ import annotations

ALPHA = 0.3


class SwitchCostTracker:
    """EMA of observed switch durations, keyed by direction.

    `from_model is None` is a cold start (nothing was awake), tracked apart because it has no
    sleep phase. Directions are kept separate because a wake from host RAM and a wake from
    disk can differ by an order of magnitude.
    """

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self._ema: dict[tuple[str | None, str], float] = {}

    def observe(self, from_model: str | None, to_model: str, seconds: float) -> float:
        key = (from_model, to_model)
        old = self._ema.get(key)
        new = seconds if old is None else self.alpha * seconds + (1 - self.alpha) * old
        self._ema[key] = new
        return new

    def estimate(self, from_model: str | None, to_model: str) -> float | None:
        return self._ema.get((from_model, to_model))

    def items(self) -> list[tuple[tuple[str | None, str], float]]:
        return sorted(self._ema.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
