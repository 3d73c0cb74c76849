"""Every built-in policy, with draining on and off, against every invariant.

Built with `llmux.testing.policy_conformance`, exactly as a policy author's own test is, so
the suite that guards llmux is the one users get: one class per (policy, drain mode), each
with the state machine and the endless-traffic test.
"""

from __future__ import annotations

from llmux.policies import BUILTIN
from llmux.testing import policy_conformance

for _name, _policy in sorted(BUILTIN.items()):
    for _drain, _label in ((True, "Drain"), (False, "NoDrain")):
        _case = policy_conformance(_policy, drain_before_switch=_drain)
        _case.__name__ = _case.__qualname__ = f"Test{_name.title()}{_label}"
        globals()[_case.__name__] = _case
del _case
