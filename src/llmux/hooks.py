"""Running a model's hook: `sh -c HOOK`, bounded in time.

Hooks get `LLMUX_MODEL`, `LLMUX_PORT`, `LLMUX_PYTHON` and `LLMUX_STATE_DIR` (a directory of
llmux's own, for pid files and the like: a fixed path under /tmp would be shared by every llmux
and every test run on the machine).

Output goes to an anonymous file, not a pipe: a wake hook commonly starts a server in the
background, and that server would inherit a pipe and hold it open, so waiting for EOF would
wait for the server's death. We wait for the hook's own exit instead.

Each hook runs in its own session, so on timeout or cancellation the whole process group is
killed — including anything the hook started but did not wait for.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Protocol

import msgspec
import trio

from llmux.config import Config
from llmux.core.messages import Hook

OUTPUT_TAIL_BYTES = 2048


class HookOutcome(msgspec.Struct, frozen=True):
    ok: bool
    detail: str
    duration: float
    output_tail: str
    # The hook's process group (its pid: it leads its own session); 0 if it never started.
    pgid: int = 0


class ProcessGroups:
    """The process groups llmux started that may still have members, for a forced exit.

    Running hooks, and each awake model's wake hook: a backend that a wake hook started in
    the background, without a session of its own, lives on in that group after the hook
    exits. The graceful path puts such a model to sleep with its sleep hook; a forced exit
    (a second Ctrl-C) has no time for that, so it kills these groups instead of leaving a
    backend holding the GPU.
    """

    def __init__(self) -> None:
        self._running: set[int] = set()
        self._awake: dict[str, int] = {}

    def started(self, pgid: int) -> None:
        self._running.add(pgid)

    def ended(self, pgid: int) -> None:
        self._running.discard(pgid)

    def keep(self, model: str, pgid: int) -> None:
        """`model` woke through the hook whose group is `pgid`: kept only while the group has
        members (left empty, its number could be reused by an unrelated process group)."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        self._awake[model] = pgid

    def forget(self, model: str) -> None:
        """`model` is asleep: its sleep hook took care of whatever its wake hook started."""
        self._awake.pop(model, None)

    def kill_all(self) -> int:
        """SIGKILL every group; returns how many were still there."""
        killed = 0
        for pgid in {*self._running, *self._awake.values()}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed += 1
        self._running.clear()
        self._awake.clear()
        return killed


async def run_hook(
    command: str,
    *,
    model: str,
    port: int,
    cwd: str,
    timeout: float | None,  # noqa: ASYNC109 - the hook's own limit, reported in its outcome
    state_dir: str | None = None,
    groups: ProcessGroups | None = None,
) -> HookOutcome:
    env = dict(os.environ)
    env["LLMUX_MODEL"] = model
    env["LLMUX_PORT"] = str(port)
    # Lets a hook start a Python tool with the interpreter llmux itself runs on.
    env["LLMUX_PYTHON"] = sys.executable
    if state_dir is not None:
        env["LLMUX_STATE_DIR"] = state_dir
    started = trio.current_time()
    with tempfile.TemporaryFile() as output:
        try:
            process = await trio.lowlevel.open_process(
                ["sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return HookOutcome(False, f"cannot start sh: {exc}", 0.0, "")
        if groups is not None:
            groups.started(process.pid)
        try:
            with trio.move_on_after(timeout if timeout is not None else math.inf) as scope:
                status = await process.wait()
        finally:
            if process.returncode is None:
                _kill_group(process.pid)
                with trio.CancelScope(shield=True):
                    await process.wait()
            if groups is not None:
                groups.ended(process.pid)
        duration = trio.current_time() - started
        tail = _tail(output)
    if scope.cancelled_caught:
        return HookOutcome(False, f"timed out after {timeout:g}s", duration, tail, process.pid)
    if status != 0:
        last_line = tail.strip().splitlines()[-1] if tail.strip() else ""
        why = f"exit status {status}" if status > 0 else f"killed by signal {-status}"
        detail = f"{why}: {last_line}" if last_line else why
        return HookOutcome(False, detail, duration, tail, process.pid)
    return HookOutcome(True, "", duration, tail, process.pid)


class HookRunner(Protocol):
    """Runs `hook` of `model` to its end: what the model actors are given (a test gives them
    a fake, and the start-up probes use the same one)."""

    async def __call__(self, model: str, hook: Hook) -> HookOutcome: ...


class ShellHooks:
    """The configured hooks, run with `sh -c` in the config file's directory."""

    def __init__(self, config: Config, groups: ProcessGroups | None = None) -> None:
        self.config = config
        self.groups = groups

    async def __call__(self, model: str, hook: Hook) -> HookOutcome:
        settings = self.config.models[model]
        command, timeout = settings.hook(hook)
        if command is None:
            # The config refuses health checks without an alive hook, and a model without
            # wake and sleep hooks (or an engine that provides them); never hang on one.
            return HookOutcome(hook is Hook.ALIVE, f"no {hook.value} hook", 0.0, "")
        outcome = await run_hook(
            command,
            model=model,
            port=settings.port,
            cwd=self.config.base_dir,
            timeout=timeout,
            state_dir=self.config.state_dir,
            groups=self.groups,
        )
        if self.groups is not None:
            if hook is Hook.WAKE and outcome.ok:
                self.groups.keep(model, outcome.pgid)
            elif hook is Hook.SLEEP:
                self.groups.forget(model)
        return outcome


def prepare_state_dir(path: str) -> None:
    """Create the hooks' state directory (and its parents) if missing, before any hook runs.

    Mode 0700, as the XDG base directory spec asks of the directories it creates: what hooks
    keep there (pid files, sockets) is nobody else's business."""
    Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _tail(output: IO[bytes]) -> str:
    output.seek(0, os.SEEK_END)
    size = output.tell()
    output.seek(max(0, size - OUTPUT_TAIL_BYTES))
    return output.read().decode("utf-8", "replace")
