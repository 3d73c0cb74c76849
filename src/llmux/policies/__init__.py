"""Built-in switch policies, and loading a policy by name or `module:Class`."""

from __future__ import annotations

import importlib
from typing import Any

from llmux.core.policy import SwitchPolicy
from llmux.policies.cost_quantum import CostQuantumPolicy
from llmux.policies.fifo import FifoPolicy

BUILTIN: dict[str, type[Any]] = {"fifo": FifoPolicy, "cost_quantum": CostQuantumPolicy}


class PolicyLoadError(ValueError):
    pass


def resolve_policy_class(type_name: str) -> type[Any]:
    """A built-in name, or `package.module:ClassName` for a user's own policy."""
    if type_name in BUILTIN:
        return BUILTIN[type_name]
    if ":" not in type_name:
        known = ", ".join(sorted(BUILTIN))
        raise PolicyLoadError(
            f"unknown policy type {type_name!r}: use one of {known} or 'module:Class'"
        )
    module_name, _, class_name = type_name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyLoadError(f"cannot import policy module {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise PolicyLoadError(f"module {module_name!r} has no class {class_name!r}")
    return cls


def build_policy(type_name: str, options: dict[str, Any]) -> SwitchPolicy:
    cls = resolve_policy_class(type_name)
    try:
        policy = cls(**options)
    except (TypeError, ValueError) as exc:
        # TypeError: an unknown or missing option; ValueError: an option out of range.
        given = ", ".join(sorted(options)) or "none"
        raise PolicyLoadError(
            f"policy {type_name!r} rejected its options ({given}): {exc}"
        ) from exc
    if not isinstance(policy, SwitchPolicy):
        raise PolicyLoadError(
            f"{type_name!r} is not a switch policy (needs name, tick_interval_secs, "
            "on_pending and on_tick)"
        )
    return policy
