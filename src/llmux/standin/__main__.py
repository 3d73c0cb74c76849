"""A small OpenAI-compatible stand-in backend, plus commands to run it from llmux hooks.

It is the baseline in benchmarks, so it does the least a real server would: plain trio + h11
with keep-alive, one JSON decode per request, one write per non-streamed response. Streamed
responses send every SSE event as its own h11 Data event, so a proxy in front sees each one
the moment it is produced.

    python -m llmux.standin serve --port 8001 --name small
    python -m llmux.standin serve --port 8001 --slots 4   # like a GPU whose batch holds 4
    python -m llmux.standin start --port 8001 --pidfile "$LLMUX_STATE_DIR/small.pid"  # `wake`
    python -m llmux.standin stop --pidfile "$LLMUX_STATE_DIR/small.pid"  # `sleep`; removes it
    python -m llmux.standin alive --port 8001                            # an `alive` hook
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import trio

from llmux.cli.argtypes import positive_int
from llmux.processes import is_running
from llmux.standin.protocol import POLL_INTERVAL
from llmux.standin.server import serve

# ---------------------------------------------------------------------------------------- CLI


def _write_atomically(path: str, text: str) -> None:
    # Pollers of the file must never see it half-written.
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(text)
        partial.replace(target)
    except BaseException:
        # A full disk or a signal must not leave the half-written file behind.
        partial.unlink(missing_ok=True)
        raise


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            run = functools.partial(
                serve,
                args.port,
                host=args.host,
                name=args.name,
                chunk_delay=args.chunk_delay,
                slots=args.slots,
            )
            port: int = await nursery.start(run)
            _announce(args.host, port, args.ready_file)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _announce(host: str, port: int, ready_file: str | None) -> None:
    # Blocking I/O inside trio, but once, at startup, and tiny.
    print(f"listening on {host}:{port}", flush=True)
    if ready_file:
        _write_atomically(ready_file, f"{port}\n")


def _cmd_serve(args: argparse.Namespace) -> int:
    trio.run(_serve_until_signalled, args)
    return 0


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _output(log: str | None) -> Iterator[IO[bytes] | int]:
    if log is None:
        yield subprocess.DEVNULL
    else:
        with open(log, "ab") as file:
            yield file


def _wait_until_serving(
    child: subprocess.Popen[bytes], port: int, ready_file: Path, timeout: float
) -> str | None:
    """None once `child` itself listens on `port`, else why it does not."""
    deadline = time.monotonic() + timeout
    while True:
        status = child.poll()
        if status is not None:
            return f"standin exited with status {status} before listening on 127.0.0.1:{port}"
        # The ready file proves the listener is the child's, not some other process's.
        if ready_file.exists() and _accepts_connections(port):
            return None
        if time.monotonic() >= deadline:
            return f"standin did not listen on 127.0.0.1:{port} within {timeout:g} s"
        time.sleep(POLL_INTERVAL)


def _cmd_start(args: argparse.Namespace) -> int:
    port: int = args.port
    if _already_started(Path(args.pidfile)) and _accepts_connections(port):
        return 0  # a wake hook run twice (e.g. after llmux restarts) must not fail
    if _accepts_connections(port):
        print(f"standin start: 127.0.0.1:{port} is already in use; not starting", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="llmux-standin-") as scratch:
        ready_file = Path(scratch) / "ready"
        command = [
            *(sys.executable, "-m", "llmux.standin", "serve", "--port", str(port)),
            *("--name", args.name, "--chunk-delay", repr(args.chunk_delay)),
            *(("--slots", str(args.slots)) if args.slots is not None else ()),
            *("--ready-file", str(ready_file)),
        ]
        with _output(args.log) as out:
            # A new session and no inherited pipes: the hook that ran us can finish and its
            # caller stop reading without the server noticing.
            child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        problem = _wait_until_serving(child, port, ready_file, args.timeout)
    if problem is not None:
        if child.poll() is None:
            child.kill()
            child.wait()
        hint = f" (see {args.log})" if args.log else ""
        print(f"standin start: {problem}{hint}", file=sys.stderr)
        return 1
    _write_atomically(args.pidfile, f"{child.pid}\n")
    # It runs on after we exit: tell Popen not to warn that it was never waited for.
    child.returncode = 0
    return 0


def _already_started(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    return is_running(pid) and _is_standin(pid)


def _is_standin(pid: int) -> bool:
    """Guard against a recycled pid: only signal a process that runs this module."""
    if not Path("/proc/self").exists():
        return is_running(pid)  # no /proc to check the command line against
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # gone
    return b"llmux.standin" in cmdline


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if _wait_gone(pid, timeout):
            return
        os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, timeout):
            print(f"standin stop: pid {pid} survived SIGKILL", file=sys.stderr)


def _cmd_stop(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    try:
        text = pidfile.read_text()
    except FileNotFoundError:
        return 0  # never started, or already stopped
    try:
        pid = int(text.strip())
    except ValueError:
        print(f"standin stop: {pidfile} does not hold a pid: {text[:40]!r}", file=sys.stderr)
        return 1
    if _is_standin(pid):
        try:
            _terminate(pid, args.timeout)
        except PermissionError:
            print(f"standin stop: not permitted to signal pid {pid}", file=sys.stderr)
            return 1
    pidfile.unlink(missing_ok=True)
    return 0


def _cmd_alive(args: argparse.Namespace) -> int:
    """Exit 0 when a server answers GET /health with 200 on the port (an `alive` hook)."""
    try:
        with socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        print(f"standin alive: 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    if answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
        return 0
    print(f"standin alive: 127.0.0.1:{args.port} answered {answer[:40]!r}", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmux.standin", description="OpenAI-compatible stand-in backend"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def identity(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--name", default="standin", help="reported model id and backend name")
        sub.add_argument(
            "--chunk-delay", type=float, default=0.0, help="seconds between streamed events"
        )
        sub.add_argument(
            "--slots",
            type=positive_int,
            help="produce at most N completions at once; the rest wait their turn "
            "(default: no limit)",
        )

    serve_cmd = commands.add_parser("serve", help="serve in the foreground")
    serve_cmd.add_argument("--port", type=int, required=True)
    serve_cmd.add_argument("--host", default="127.0.0.1")
    identity(serve_cmd)
    serve_cmd.add_argument("--ready-file", help="write the bound port here once listening")
    serve_cmd.set_defaults(run=_cmd_serve)

    start_cmd = commands.add_parser("start", help="serve in the background (a wake hook)")
    start_cmd.add_argument("--port", type=int, required=True)
    start_cmd.add_argument("--pidfile", required=True)
    identity(start_cmd)
    start_cmd.add_argument("--log", help="server output (default: discarded)")
    start_cmd.add_argument("--timeout", type=float, default=10.0)
    start_cmd.set_defaults(run=_cmd_start)

    stop_cmd = commands.add_parser("stop", help="stop a started server (a sleep hook)")
    stop_cmd.add_argument("--pidfile", required=True)
    stop_cmd.add_argument("--timeout", type=float, default=10.0)
    stop_cmd.set_defaults(run=_cmd_stop)

    alive_cmd = commands.add_parser("alive", help="succeed if a server is healthy on the port")
    alive_cmd.add_argument("--port", type=int, required=True)
    alive_cmd.add_argument("--timeout", type=float, default=2.0)
    alive_cmd.set_defaults(run=_cmd_alive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
