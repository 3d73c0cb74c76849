"""Engines declared in the config (`engine` block) instead of scripted hooks.

An engine is compiled into the three hooks the model actors already run: what to do and when
stays the cores' decision, and a managed process gets the hooks' time limits, failure paths,
process groups (a forced stop kills it) and start-up adoption for free. Each generated hook
runs `python -m llmux.engines.process start|stop|alive` (see that module); an explicit
`wake`, `sleep` or `alive` in the model's config overrides the engine's.

Types so far: `command` (llama-swap's `cmd`: any server started on wake and stopped on sleep)
and `llama.cpp` (`llama-server` run the same way: a cold swap; its `/health` answers 503
while the model loads, which the readiness check waits through).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from llmux.core.messages import Hook

ENGINE_TYPES = ("command", "llama.cpp")


def logs_path(state_dir: str, model: str) -> str:
    """Where a managed process's output goes (its stdout and stderr, appended)."""
    return f"{state_dir}/logs/{model}.log"


def engine_hook(
    hook: Hook,
    *,
    model: str,
    port: int,
    command: str,
    check_path: str,
    env: Mapping[str, str],
    stop_timeout_secs: float,
) -> str:
    """The shell command of `hook` for a managed-process engine. `${PORT}` and `${MODEL}` in
    `command` become the model's port and name (other `$` are the shell's, at wake)."""
    argv = ["exec", '"$LLMUX_PYTHON"', "-m", "llmux.engines.process", hook.value]
    argv += ["--check-path", shlex.quote(check_path)]
    if hook is Hook.WAKE:
        for name, value in sorted(env.items()):
            argv += ["--env", shlex.quote(f"{name}={value}")]
        substituted = command.replace("${PORT}", str(port)).replace("${MODEL}", model)
        argv += ["--command", shlex.quote(substituted)]
    elif hook is Hook.SLEEP:
        argv += ["--stop-timeout", f"{stop_timeout_secs:g}"]
    return " ".join(argv)
