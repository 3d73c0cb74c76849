"""A managed engine process, driven by the hooks an `engine` block compiles into.

    python -m llmux.engines.process wake --check-path /health [--env K=V ...] --command CMD
    python -m llmux.engines.process sleep --check-path /health --stop-timeout SECS
    python -m llmux.engines.process alive --check-path /health

`wake` starts `sh -c COMMAND` in the hook's own process group (so that the hook's time limit
and llmux's forced stop kill it with the hook), its output appended to
`$LLMUX_STATE_DIR/logs/MODEL.log`, its pid in `$LLMUX_STATE_DIR/engines/MODEL.pid`, and
returns once `GET http://127.0.0.1:$LLMUX_PORT{check-path}` answers 200 (503 and refused
connections mean "still loading"), or fails as soon as the process exits. `sleep` sends the
process group SIGTERM, then SIGKILL after `--stop-timeout` seconds. `alive` succeeds while the
process runs and its check answers 200. Environment: what llmux gives every hook
(`LLMUX_MODEL`, `LLMUX_PORT`, `LLMUX_STATE_DIR`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llmux.processes import is_running

POLL_SECS = 0.05


def _paths() -> tuple[Path, Path, str, int]:
    state = Path(os.environ["LLMUX_STATE_DIR"])
    model = os.environ["LLMUX_MODEL"]
    return (
        state / "engines" / f"{model}.pid",
        state / "logs" / f"{model}.log",
        model,
        int(os.environ["LLMUX_PORT"]),
    )


def _ready(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = log.read_bytes()[-4096:].decode("utf-8", "replace").strip().splitlines()
        if lines:
            return lines[-1]
    return ""


def wake(check_path: str, env: Sequence[str], command: str) -> int:
    pidfile, log, model, port = _paths()
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ)
    for item in env:
        name, _, value = item.partition("=")
        environment[name] = value
    with log.open("ab") as output:
        output.write(f"--- llmux: starting {model}: {command}\n".encode())
        output.flush()
        process = subprocess.Popen(
            ["sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    pidfile.write_text(f"{process.pid}\n")
    while not _ready(port, check_path):
        status = process.poll()
        if status is not None:
            pidfile.unlink(missing_ok=True)
            last = _last_line(log)
            print(
                f"{model} exited with status {status} before it was ready: {last}", file=sys.stderr
            )
            return 1
        time.sleep(POLL_SECS)
    return 0


def sleep(stop_timeout: float) -> int:
    pidfile, _, model, _ = _paths()
    pid = _pid(pidfile)
    if pid is None or not is_running(pid):
        pidfile.unlink(missing_ok=True)
        return 0
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        group = None
    _signal(pid, group, signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(POLL_SECS)
    if is_running(pid):
        print(f"{model} did not stop within {stop_timeout:g}s: killing it", file=sys.stderr)
        _signal(pid, group, signal.SIGKILL)
        while is_running(pid):
            time.sleep(POLL_SECS)
    pidfile.unlink(missing_ok=True)
    return 0


def _signal(pid: int, group: int | None, sig: signal.Signals) -> None:
    """The whole group (the engine's own children too), unless it is ours: a `sleep` hook
    runs in a group of its own, so the engine's is the wake hook's."""
    with contextlib.suppress(ProcessLookupError):
        if group is not None and group != os.getpgrp():
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)


def alive(check_path: str) -> int:
    pidfile, _, _, port = _paths()
    pid = _pid(pidfile)
    return 0 if pid is not None and is_running(pid) and _ready(port, check_path) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmux.engines.process")
    parser.add_argument("action", choices=["wake", "sleep", "alive"])
    parser.add_argument("--check-path", default="/health")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--stop-timeout", type=float, default=10.0)
    parser.add_argument("--command", help="wake: the engine's shell command")
    args = parser.parse_args(argv)
    if args.action == "wake":
        if not args.command:
            parser.error("wake needs --command")
        return wake(args.check_path, args.env, args.command)
    if args.action == "sleep":
        return sleep(args.stop_timeout)
    return alive(args.check_path)


if __name__ == "__main__":
    sys.exit(main())
