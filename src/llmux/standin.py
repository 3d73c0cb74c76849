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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import h11
import msgspec
import trio

from llmux.cli.argtypes import positive_int

RECEIVE_SIZE = 65536
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_TOKENS = 8
MAX_TOKENS = 100_000
POLL_INTERVAL = 0.02

_CHAT_PATH = b"/v1/chat/completions"
_TEXT_PATH = b"/v1/completions"
_JSON = (b"content-type", b"application/json")
# h11 adds this itself only once it has parsed a request; a garbled one still needs it.
_CLOSE = (b"connection", b"close")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

_encode = msgspec.json.Encoder().encode


# --------------------------------------------------------------------------- request parsing


class _CompletionFields(msgspec.Struct):
    # `object` everywhere: a field of an unexpected type falls back to its default instead of
    # failing the request, and msgspec skips every other field without building it.
    model: object = None
    stream: object = False
    max_tokens: object = None
    chunk_delay: object = None


_decode_completion = msgspec.json.Decoder(_CompletionFields).decode


class _BadRequest(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Completion:
    chat: bool
    model: object
    stream: bool
    tokens: int
    chunk_delay: float


def _parse_completion(body: bytes, *, chat: bool, name: str, chunk_delay: float) -> _Completion:
    try:
        fields = _decode_completion(body)
    except msgspec.DecodeError as exc:
        raise _BadRequest(f"Invalid JSON body: {exc}") from None
    tokens = fields.max_tokens
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        tokens = DEFAULT_TOKENS
    delay = fields.chunk_delay
    if not isinstance(delay, int | float) or isinstance(delay, bool):
        delay = chunk_delay
    return _Completion(
        chat=chat,
        model=name if fields.model is None else fields.model,
        stream=fields.stream is True,
        tokens=max(0, min(tokens, MAX_TOKENS)),
        chunk_delay=max(0.0, float(delay)),
    )


# ----------------------------------------------------------------------------- response bodies


@functools.lru_cache(maxsize=64)
def _text(tokens: int) -> str:
    return " ".join(f"tok{i}" for i in range(tokens))


def _error(message: str) -> bytes:
    return _encode({"error": {"message": message, "type": "invalid_request_error"}})


def _completion_body(req: _Completion, number: int, name: str) -> bytes:
    text = _text(req.tokens)
    if req.chat:
        kind = "chat.completion"
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
    else:
        kind = "text_completion"
        choice = {"text": text}
    return _encode(
        {
            "id": f"cmpl-{number}",
            "object": kind,
            "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, **choice, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": req.tokens,
                "total_tokens": req.tokens + 1,
            },
            "backend": name,
            "request_number": number,
        }
    )


def _sse_events(req: _Completion, number: int) -> Iterator[bytes]:
    """Every SSE event of a streamed completion, the final `[DONE]` included."""
    base = {
        "id": f"cmpl-{number}",
        "object": "chat.completion.chunk" if req.chat else "text_completion",
        "created": int(time.time()),
        "model": req.model,
    }
    for i in range(req.tokens + 1):
        piece = f"tok{i} " if i < req.tokens else None
        choice: dict[str, Any] = {"index": 0}
        if req.chat:
            delta: dict[str, str] = {} if piece is None else {"content": piece}
            if i == 0 and piece is not None:
                delta = {"role": "assistant", **delta}
            choice["delta"] = delta
        else:
            choice["text"] = piece or ""
        choice["finish_reason"] = None if piece is not None else "stop"
        yield b"data: " + _encode({**base, "choices": [choice]}) + b"\n\n"
    yield b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------- server


class _TooLarge(Exception):
    pass


class _Peer:
    """One client connection: h11 state plus the socket it drives."""

    __slots__ = ("conn", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)

    async def read_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its whole body; None when the client closed cleanly."""
        request: h11.Request | None = None
        body: list[bytes] = []
        size = 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY_BYTES:
                    raise _TooLarge
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None  # h11 yields EndOfMessage only after a Request
                return request, b"".join(body)
            else:  # ConnectionClosed, or PAUSED after a protocol switch we never agree to
                return None

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def send_body(
        self, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        head = [_JSON, (b"content-length", str(len(body)).encode()), *headers]
        await self.send(
            h11.Response(status_code=status, headers=head), h11.Data(data=body), h11.EndOfMessage()
        )

    def can_respond(self) -> bool:
        return self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    def can_continue(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def _receive(self) -> None:
        if self.conn.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))


class Standin:
    """The backend's state, shared by all its connections."""

    def __init__(
        self, name: str = "standin", chunk_delay: float = 0.0, slots: int | None = None
    ) -> None:
        self.name = name
        self.chunk_delay = chunk_delay
        # With `slots`, at most that many completions are produced at once and the rest wait,
        # first come first served (trio's CapacityLimiter is fair): finite serving capacity,
        # as a GPU has once its batch is full. The head goes out when a slot is taken, so a
        # client sees the queueing as time to the first byte.
        self._slots = None if slots is None else trio.CapacityLimiter(slots)
        # Completion requests answered so far; also the next response's `request_number`.
        self.served = 0
        self._identity = (b"x-standin-backend", name.encode())
        self._models = _encode(
            {
                "object": "list",
                "data": [{"id": name, "object": "model", "created": 0, "owned_by": "standin"}],
            }
        )

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        peer = _Peer(stream)
        # A client hanging up, even mid-stream, costs its own connection and nothing more.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._converse(peer)

    async def _converse(self, peer: _Peer) -> None:
        while True:
            try:
                got = await peer.read_request()
            except h11.RemoteProtocolError as exc:
                if peer.can_respond():
                    message = _error(f"Bad request: {exc}")
                    await peer.send_body(exc.error_status_hint, message, [_CLOSE])
                return
            except _TooLarge:
                await peer.send_body(413, _error("Request body too large"), [_CLOSE])
                return
            if got is None:
                return
            await self._dispatch(peer, *got)
            if not peer.can_continue():
                return
            peer.conn.start_next_cycle()

    async def _dispatch(self, peer: _Peer, request: h11.Request, body: bytes) -> None:
        path = request.target.partition(b"?")[0]
        if request.method == b"POST" and path in (_CHAT_PATH, _TEXT_PATH):
            await self._complete(peer, body, chat=path == _CHAT_PATH)
        elif request.method == b"GET" and path == b"/v1/models":
            await peer.send_body(200, self._models, [self._identity])
        elif request.method == b"GET" and path == b"/health":
            await peer.send_body(200, b'{"status":"ok"}', [self._identity])
        elif request.method == b"GET" and path == b"/stats":
            await peer.send_body(200, _encode({"requests": self.served}), [self._identity])
        else:
            where = f"{request.method.decode('ascii', 'replace')} {path.decode('ascii', 'replace')}"
            await peer.send_body(404, _error(f"Not found: {where}"), [self._identity])

    async def _complete(self, peer: _Peer, body: bytes, *, chat: bool) -> None:
        try:
            req = _parse_completion(body, chat=chat, name=self.name, chunk_delay=self.chunk_delay)
        except _BadRequest as exc:
            await peer.send_body(400, _error(str(exc)), [self._identity])
            return
        if self._slots is None:
            await self._produce(peer, req)
        else:
            async with self._slots:
                await self._produce(peer, req)

    async def _produce(self, peer: _Peer, req: _Completion) -> None:
        number = self.served
        self.served += 1
        if req.stream:
            await self._stream(peer, req, number)
        else:
            await peer.send_body(200, _completion_body(req, number, self.name), [self._identity])

    async def _stream(self, peer: _Peer, req: _Completion, number: int) -> None:
        # No content-length: h11 frames the body as chunked for HTTP/1.1 clients.
        await peer.send(h11.Response(status_code=200, headers=[*_SSE_HEADERS, self._identity]))
        for i, event in enumerate(_sse_events(req, number)):
            if i and req.chunk_delay:
                await trio.sleep(req.chunk_delay)
            await peer.send(h11.Data(data=event))
        await peer.send(h11.EndOfMessage())


async def serve(
    port: int,
    *,
    host: str = "127.0.0.1",
    name: str = "standin",
    chunk_delay: float = 0.0,
    slots: int | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (useful with port 0) once listening."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    await trio.serve_listeners(Standin(name, chunk_delay, slots).handle_connection, listeners)


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
    return _alive(pid) and _is_standin(pid)


def _process_state(pid: int) -> str | None:
    """The /proc state letter (R, S, Z, ...), None without /proc or once the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; whether anyone reaps it is not our concern.
    return _process_state(pid) != "Z"


def _is_standin(pid: int) -> bool:
    """Guard against a recycled pid: only signal a process that runs this module."""
    if not Path("/proc/self").exists():
        return _alive(pid)  # no /proc to check the command line against
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # gone
    return b"llmux.standin" in cmdline


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
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
