"""What FIFO's decisions say on the status page and in `switch_started`."""

from __future__ import annotations

from llmux.core.world import HookScript, World
from llmux.policies.fifo import FifoPolicy


def test_a_fifo_switch_says_how_many_wait_and_no_meaningless_age() -> None:
    world = World({"a": HookScript(1.0, 0.5), "b": HookScript(1.0, 0.5)}, FifoPolicy())
    world.submit("a", at=0.0, service=0.1)
    world.run(until=0.0)
    # FIFO decides the instant the request arrives: an "oldest 0.000s" here told nobody
    # anything.
    assert world.scheduler.last_decision == "switch to a: 1 waiting"


def test_a_fifo_switch_counts_every_request_that_waited_for_it() -> None:
    world = World({"a": HookScript(1.0, 0.5), "b": HookScript(1.0, 0.5)}, FifoPolicy())
    world.submit("a", at=0.0, service=0.1)
    # Three requests for b arrive while a is still waking: b's switch waits for a's to end.
    for at in (0.2, 0.4, 0.6):
        world.submit("b", at=at, service=0.1)
    world.run(until=1.05)
    assert world.scheduler.switch is not None and world.scheduler.switch.to_model == "b"
    assert world.scheduler.last_decision == "switch to b: 3 waiting"
