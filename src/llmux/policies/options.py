"""Naming a `policy` option the chosen policy's constructor cannot take, with the closest
valid name (a misspelt field of `policy` itself lands among the options: llmux hands every key
it does not know to the policy)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Sequence
from typing import Any


def unknown_option(
    cls: type[Any], options: Iterable[str], fields: Sequence[str]
) -> tuple[str, str] | None:
    """The first option `cls(...)` cannot take and what to say about it, or None.

    The constructor's own TypeError ("takes no arguments") names neither the option nor what
    was meant; `fields` are llmux's own fields of `policy`, the likeliest intended names.
    """
    params = keyword_parameters(cls)
    if params is None:
        return None  # **kwargs, or no signature to read: let the constructor judge
    for option in options:
        if option not in params:
            return option, _detail(option, cls.__name__, params, fields)
    return None


def keyword_parameters(cls: type[Any]) -> list[str] | None:
    """The keyword arguments `cls(...)` takes, or None when it takes any (or cannot tell)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    kinds = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in kinds]


def _detail(option: str, class_name: str, params: list[str], fields: Sequence[str]) -> str:
    close = difflib.get_close_matches(option, [*fields, *params], n=1)
    if close and close[0] in params:
        return f"did you mean `{close[0]}`? (an option of {class_name}'s constructor)"
    if close:
        return (
            f"did you mean `{close[0]}`? (a field of `policy`, not an option of "
            f"{class_name}'s constructor)"
        )
    takes = ", ".join(params) or "no options"
    return (
        f"{class_name}'s constructor takes {takes}; the fields of `policy` are {', '.join(fields)}"
    )
