"""Running a model's hook: `sh -c HOOK`, with `LLMUX_MODEL` set, bounded in time.

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
from typing import IO

import msgspec
import trio

OUTPUT_TAIL_BYTES = 2048


class HookOutcome(msgspec.Struct, frozen=True):
    ok: bool
    detail: str
    duration: float
    output_tail: str


async def run_hook(
    command: str,
    *,
    model: str,
    port: int,
    cwd: str,
    timeout: float | None,  # noqa: ASYNC109 - the hook's own limit, reported in its outcome
) -> HookOutcome:
    env = dict(os.environ)
    env["LLMUX_MODEL"] = model
    env["LLMUX_PORT"] = str(port)
    # Lets a hook start a Python tool with the interpreter llmux itself runs on.
    env["LLMUX_PYTHON"] = sys.executable
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
        try:
            with trio.move_on_after(timeout if timeout is not None else math.inf) as scope:
                status = await process.wait()
        finally:
            if process.returncode is None:
                _kill_group(process.pid)
                with trio.CancelScope(shield=True):
                    await process.wait()
        duration = trio.current_time() - started
        tail = _tail(output)
    if scope.cancelled_caught:
        return HookOutcome(False, f"timed out after {timeout:g}s", duration, tail)
    if status != 0:
        last_line = tail.strip().splitlines()[-1] if tail.strip() else ""
        why = f"exit status {status}" if status > 0 else f"killed by signal {-status}"
        return HookOutcome(False, f"{why}: {last_line}" if last_line else why, duration, tail)
    return HookOutcome(True, "", duration, tail)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _tail(output: IO[bytes]) -> str:
    output.seek(0, os.SEEK_END)
    size = output.tell()
    output.seek(max(0, size - OUTPUT_TAIL_BYTES))
    return output.read().decode("utf-8", "replace")
