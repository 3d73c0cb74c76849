"""Built-in switch policies, and loading a policy by name or `module:Class`."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from llmux.core.policy import SwitchPolicy
from llmux.policies.cost_quantum import CostQuantumPolicy
from llmux.policies.fifo import FifoPolicy

BUILTIN: dict[str, type[Any]] = {"fifo": FifoPolicy, "cost_quantum": CostQuantumPolicy}


class PolicyLoadError(ValueError):
    pass


PathLike = str | os.PathLike[str]


def resolve_policy_class(type_name: str, search_path: PathLike | None = None) -> type[Any]:
    """A built-in name, or `package.module:ClassName` for a user's own policy.

    `search_path` (the config file's directory, for `llmux run` and `llmux simulate` alike)
    is put first on `sys.path` before a `module:Class` is imported, so a policy file next to
    the config loads without PYTHONPATH.
    """
    if type_name in BUILTIN:
        return BUILTIN[type_name]
    if ":" not in type_name:
        known = ", ".join(sorted(BUILTIN))
        raise PolicyLoadError(
            f"unknown policy type {type_name!r}: use one of {known} or 'module:Class'"
        )
    module_name, _, class_name = type_name.partition(":")
    if search_path is not None:
        _put_on_import_path(search_path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # Say where it looked: the usual fix is moving the file next to the config.
        where = f" (searched {os.path.abspath(search_path)!r} first)" if search_path else ""
        raise PolicyLoadError(f"cannot import policy module {module_name!r}{where}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise PolicyLoadError(f"module {module_name!r} has no class {class_name!r}")
    return cls


def _put_on_import_path(directory: PathLike) -> None:
    """Put `directory` first on sys.path, for good.

    Permanently rather than just around the import: a policy module may import its sibling
    modules lazily (in its constructor or on its first decision, long after the config was
    checked), and llmux builds the policy again when it starts serving; both must find what
    the check found. That is also what Python does for a script's own directory. A directory
    already on the path (PYTHONPATH, say) stays where the user put it.
    """
    entry = os.path.abspath(directory)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    # A module written after the interpreter started (or after an earlier failed import)
    # may be missing from the finders' cached directory listings.
    importlib.invalidate_caches()


def build_policy(
    type_name: str, options: dict[str, Any], search_path: PathLike | None = None
) -> SwitchPolicy:
    cls = resolve_policy_class(type_name, search_path)
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
