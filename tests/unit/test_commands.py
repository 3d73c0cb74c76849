"""An operator's commands are answered by the scheduler core: refusals, acceptance and the
final outcome are its decisions, as CommandReply effects the HTTP side only relays."""

from __future__ import annotations

from llmux.core.messages import (
    CommandOutcome,
    CommandReply,
    ManualSleep,
    ManualWake,
    Pin,
    Shutdown,
)
from llmux.core.world import HookScript, World
from llmux.policies.fifo import FifoPolicy


def _world(**b: object) -> tuple[World, list[CommandReply]]:
    replies: list[CommandReply] = []

    def on_effect(effect: object) -> None:
        if isinstance(effect, CommandReply):
            replies.append(effect)

    hooks = {"a": HookScript(1.0, 0.5), "b": HookScript(2.0, 0.5, **b)}  # type: ignore[arg-type]
    return World(hooks, FifoPolicy(), on_effect=on_effect), replies


def _outcomes(replies: list[CommandReply], reply_to: int) -> list[tuple[str, bool]]:
    return [(r.outcome, r.final) for r in replies if r.reply_to == reply_to]


def test_a_manual_wake_is_accepted_then_done_when_the_model_is_active() -> None:
    world, replies = _world()
    world.command(ManualWake("b", reply_to=1), at=0.0)
    world.run()
    first, last = [r for r in replies if r.reply_to == 1]
    assert (first.outcome, first.final) == (CommandOutcome.ACCEPTED, False)
    assert (last.outcome, last.final, last.state, last.active) == (
        CommandOutcome.DONE,
        True,
        "Active",
        "b",
    )
    world.command(ManualWake("b", reply_to=2), at=5.0)
    world.run()
    assert _outcomes(replies, 2) == [(CommandOutcome.DONE, True)]  # already active


def test_a_manual_wake_whose_hook_fails_is_answered_failed() -> None:
    world, replies = _world(wake_failures=frozenset({0}))
    world.command(ManualWake("b", reply_to=1), at=0.0)
    world.run()
    assert _outcomes(replies, 1)[-1] == (CommandOutcome.FAILED, True)
    assert [r.detail for r in replies if r.reply_to == 1][-1].startswith("Hook failed for b")


def test_pinned_and_closing_refusals_come_from_the_core() -> None:
    world, replies = _world()
    world.command(Pin("a", reply_to=1), at=0.0)
    world.command(ManualWake("b", reply_to=2), at=3.0)
    world.command(ManualSleep("a", reply_to=3), at=3.0)
    world.run()
    assert _outcomes(replies, 1) == [(CommandOutcome.DONE, True)]
    assert _outcomes(replies, 2) == [(CommandOutcome.PINNED, True)]
    assert _outcomes(replies, 3) == [(CommandOutcome.PINNED, True)]
    world.command(Pin(None, reply_to=4), at=4.0)
    world.command(Shutdown(), at=5.0)
    world.command(ManualWake("b", reply_to=5), at=6.0)
    world.command(Pin("b", reply_to=6), at=6.0)
    world.run()
    assert _outcomes(replies, 5) == [(CommandOutcome.SHUTTING_DOWN, True)]
    assert _outcomes(replies, 6) == [(CommandOutcome.SHUTTING_DOWN, True)]


def test_a_pending_wake_is_answered_when_a_pin_or_a_sleep_undoes_it() -> None:
    world, replies = _world()
    world.submit("a", at=0.0, service=10.0)  # a is busy until 11: b's wake waits for it
    world.command(ManualWake("b", reply_to=1), at=2.0)
    world.command(Pin("a", reply_to=2), at=3.0)
    world.run(until=4.0)
    assert _outcomes(replies, 1) == [
        (CommandOutcome.ACCEPTED, False),
        (CommandOutcome.PINNED, True),
    ]
    world.command(ManualWake("b", reply_to=3), at=5.0)
    world.command(ManualSleep("b", reply_to=4), at=5.0)
    world.command(Pin(None, reply_to=5), at=5.0)
    world.command(ManualWake("b", reply_to=6), at=7.0)
    world.command(ManualSleep("b", reply_to=7), at=7.0)
    world.run(until=8.0)
    assert _outcomes(replies, 3) == [(CommandOutcome.PINNED, True)]  # the pin came first
    # Unpinned, b's wake is accepted, then undone by the sleep asked right after it.
    assert _outcomes(replies, 6) == [
        (CommandOutcome.ACCEPTED, False),
        (CommandOutcome.CANCELLED, True),
    ]


def test_a_manual_sleep_is_done_once_the_model_is_asleep() -> None:
    world, replies = _world()
    world.command(ManualWake("a", reply_to=1), at=0.0)
    world.command(ManualSleep("a", reply_to=2), at=2.0)
    world.run()
    assert _outcomes(replies, 2) == [
        (CommandOutcome.ACCEPTED, False),
        (CommandOutcome.DONE, True),
    ]
    last = [r for r in replies if r.reply_to == 2][-1]
    assert last.state == "Sleeping" and last.active is None
    world.command(ManualSleep("b", reply_to=3), at=10.0)  # asleep already
    world.run()
    assert _outcomes(replies, 3)[-1] == (CommandOutcome.DONE, True)
