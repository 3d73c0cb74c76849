"""The cores step a table compiled from the python-statemachine classes: the two must agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from statemachine import StateMachine
from statemachine.exceptions import TransitionNotAllowed

from llmux.core import model, scheduler
from llmux.core.lifecycle import (
    MACHINES,
    Compiled,
    ModelLifecycle,
    SwitchSequence,
    UndeclaredTransition,
    edges,
    state_name,
)


def event_names(machine: type[StateMachine]) -> list[str]:
    return sorted({event for _, event, _ in edges(machine)})


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
@given(data=st.data())
def test_the_table_and_the_library_agree_on_every_sequence_of_events(
    machine: type[StateMachine], data: st.DataObject
) -> None:
    instance = machine()
    table = Compiled(machine)
    state = table.initial
    assert state == state_name(instance)
    for event in data.draw(st.lists(st.sampled_from(event_names(machine)), max_size=40)):
        try:
            instance.send(event)
        except TransitionNotAllowed:
            with pytest.raises(UndeclaredTransition):
                table.step(state, event)
            continue
        state = table.step(state, event)
        assert state == state_name(instance)


def test_the_cores_run_the_tables_of_the_documented_classes() -> None:
    # docs/state-diagram.md is rendered from these classes; the cores must step these same ones.
    assert model.LIFECYCLE.machine is ModelLifecycle
    assert scheduler.SEQUENCE.machine is SwitchSequence
    assert model.ModelCore("m").state == "Sleeping"


def test_an_undeclared_edge_is_refused_with_its_names() -> None:
    with pytest.raises(UndeclaredTransition, match="ModelLifecycle: no 'woke' transition from"):
        Compiled(ModelLifecycle).step("Sleeping", "woke")


def test_the_name_constants_are_the_names_the_machines_declare() -> None:
    from llmux.core.lifecycle import (
        MODEL_MACHINE,
        SWITCH_MACHINE,
        ModelEvent,
        ModelLifecycle,
        ModelState,
        Phase,
        SwitchEvent,
        SwitchSequence,
        edges,
    )

    def values(namespace: type) -> set[str]:
        return {v for k, v in vars(namespace).items() if k.isupper()}

    for machine, states, events, name in (
        (ModelLifecycle, ModelState, ModelEvent, MODEL_MACHINE),
        (SwitchSequence, Phase, SwitchEvent, SWITCH_MACHINE),
    ):
        assert machine.__name__ == name
        assert values(states) == {str(s.name) for s in machine.states}
        assert values(events) == {event for _, event, _ in edges(machine)}
