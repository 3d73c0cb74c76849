"""The HTTP front end: trio + h11, one task per connection, keep-alive, streaming.

Each proxied request becomes an `Acquire` to its model's actor and always ends with a
`Finish`, sent from a `finally`, so no cancellation path (client gone, timeout, shutdown) can
leak a queued waiter or an in-flight slot. While a request waits or streams, its socket is
watched: a client that hangs up is noticed at once and its request withdrawn.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import h11
import msgspec
import trio

from llmux import control
from llmux.actors import ModelActor, SchedulerActor
from llmux.config import Limits
from llmux.core.messages import Reject
from llmux.errors import CLIENT_GONE, ClientGone, CutConnection, ErrorKind, LlmuxError
from llmux.logs import log_event
from llmux.metrics import Metrics
from llmux.status import build_status
from llmux.telemetry import Telemetry
from llmux.upstream import BackendUnreachable, UpstreamError, UpstreamPool

RECEIVE_SIZE = 65536
# Bytes of a pipelined next request we are willing to hold while answering this one.
MAX_PIPELINED_BYTES = 64 * 1024

JSON = (b"content-type", b"application/json")
HTML = (b"content-type", b"text/html; charset=utf-8")
SSE_KEEPALIVE_SECS = 15.0

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {b"host", b"content-length", b"expect"}

# h11's status hint for a request it cannot parse, as our error kinds.
_PROTOCOL_ERRORS = {
    400: ErrorKind.BAD_REQUEST,
    413: ErrorKind.BODY_TOO_LARGE,
    431: ErrorKind.HEADERS_TOO_LARGE,
}
# Routes that answer without a key: a load balancer's probe, and the status page itself
# (a browser cannot send a header when it opens a page; the page then uses the key it is
# given in its URL fragment for everything it fetches, and the page holds no data).
_OPEN_PATHS = frozenset({b"/health", b"/llmux", b"/llmux/"})


class _ModelField(msgspec.Struct):
    # `object`, so a non-string model is reported as such rather than as bad JSON.
    model: object = None


_model_decoder = msgspec.json.Decoder(_ModelField)


def extract_model(body: bytes) -> str:
    """The `model` of a JSON request body; decodes that one field only."""
    if not body.strip():
        raise LlmuxError(ErrorKind.NO_MODEL, "No model specified in request")
    try:
        model = _model_decoder.decode(body).model
    except msgspec.ValidationError as exc:
        raise LlmuxError(
            ErrorKind.BAD_REQUEST, f"Request body must be a JSON object: {exc}"
        ) from exc
    except msgspec.DecodeError as exc:
        raise LlmuxError(ErrorKind.BAD_REQUEST, f"Invalid JSON in request body: {exc}") from exc
    if model is None:
        raise LlmuxError(ErrorKind.NO_MODEL, "No model specified in request")
    if not isinstance(model, str):
        raise LlmuxError(ErrorKind.BAD_REQUEST, "The `model` field must be a string")
    return model


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key":
            return value.strip()
    return None


def key_is_valid(presented: bytes | None, keys: Sequence[bytes]) -> bool:
    """Compares against every key, each in constant time, so timing reveals nothing."""
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(presented or b"", key)
    return valid


def forwardable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    listed = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in headers if n not in _NOT_FORWARDED and n not in listed]


class ProxiedRequest:
    """What became of one proxied request, for its log line, its metrics and a shutdown."""

    __slots__ = (
        "bytes_sent",
        "duration",
        "model",
        "req_id",
        "started",
        "status",
        "streamed",
        "waited",
    )

    def __init__(self, req_id: int, model: str, started: float) -> None:
        self.req_id = req_id
        self.model = model
        self.started = started
        # Until an answer goes out, the request ends with its client gone (nginx's 499).
        self.status = CLIENT_GONE
        self.waited: float | None = None  # in llmux's queue, once granted or refused
        self.bytes_sent = 0  # of the response body
        self.streamed = False
        self.duration = 0.0


class Frontend:
    """Routes requests; shared by every connection."""

    def __init__(
        self,
        models: Mapping[str, ModelActor],
        scheduler: SchedulerActor | None,
        pool: UpstreamPool,
        metrics: Metrics,
        telemetry: Telemetry,
        *,
        limits: Limits | None = None,
        api_keys: Sequence[str] = (),
    ) -> None:
        self.models = dict(models)
        self.pool = pool
        self.metrics = metrics
        self.telemetry = telemetry
        self.limits = limits if limits is not None else Limits()
        # The /llmux/ routes need it (None: they answer 404).
        self.scheduler = scheduler
        self.api_keys = [key.encode() for key in api_keys]
        self.closing = False
        # Proxied requests not finished yet, so that a shutdown can say which it cut.
        self.in_progress: dict[int, ProxiedRequest] = {}
        self._ids = itertools.count()
        self._idle: set[trio.CancelScope] = set()
        self.open_connections = 0
        self._all_closed = trio.Event()
        self.models_listing = msgspec.json.encode(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "llmux"}
                    for name in sorted(self.models)
                ],
            }
        )

    def next_request_id(self) -> int:
        return next(self._ids)

    def begin_closing(self) -> None:
        """Stop keeping connections alive and drop the idle ones."""
        self.closing = True
        self.telemetry.journal.close_subscribers()
        for scope in list(self._idle):
            scope.cancel()
        if self.open_connections == 0:
            self._all_closed.set()

    async def wait_all_closed(self) -> None:
        await self._all_closed.wait()

    def cut_remaining(self, grace: float) -> int:
        """Log each proxied request still running when the grace period is over (they are
        about to be cut); returns how many."""
        for request in self.in_progress.values():
            log_event(
                "request_cut",
                f"request {request.req_id} for {request.model} cut by the shutdown after "
                f"{grace:g}s of grace ({request.bytes_sent} bytes sent)",
                level=logging.WARNING,
                req_id=request.req_id,
                model=request.model,
                bytes=request.bytes_sent,
                streamed=request.streamed,
            )
        return len(self.in_progress)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        self.open_connections += 1
        try:
            await HttpConnection(stream, self).serve()
        finally:
            self.open_connections -= 1
            if self.closing and self.open_connections == 0:
                self._all_closed.set()


class _SocketIO(trio.abc.Stream):
    """A client socket driven directly: trio's SocketStream yields to the scheduler after
    every successful send and recv; here only real waits do. Each request still waits at
    least twice (for its bytes, for the backend), so the connection stays a good citizen."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # Only the connection's reader calls this, and only once what came before was taken:
        # waiting first spares a recv() that would almost always fail with EAGAIN.
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                return self._sock.recv(max_bytes or RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"client connection lost: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
                continue
            except OSError as exc:
                if self._sock.fileno() == -1:
                    raise trio.ClosedResourceError("the connection was closed") from exc
                raise trio.BrokenResourceError(f"client connection lost: {exc}") from exc
            view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


class _Wakeup:
    """Lets one task sleep until another has something for it (no object per wait)."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        self._task = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


class HttpConnection:
    """One client connection: the handler (the connection's own task) serves requests one
    at a time, and a reader task owns the socket's receiving side for the connection's life.

    The reader hands bytes to h11 and wakes the handler when it waits for them. Because it
    reads all the time, a client that hangs up is noticed while its request waits in a queue
    or streams (the reader cancels `_watch`), and a pipelined next request is taken in;
    while a request is being answered it reads at most MAX_PIPELINED_BYTES ahead and then
    stops (not watching either, as a client that floods the pipe is no reason to buffer).
    One long-lived task per connection costs far less than a watcher task per request.
    """

    def __init__(self, stream: trio.abc.Stream, frontend: Frontend) -> None:
        if isinstance(stream, trio.SocketStream):
            # serve_listeners closes the husk; it has nothing left to close.
            sock = socket.socket(fileno=stream.socket.detach())
            sock.setblocking(False)
            stream = _SocketIO(sock)
        self.stream = stream
        self.frontend = frontend
        self.limits = frontend.limits
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self._data_arrived = _Wakeup()
        self._reader_resume = _Wakeup()
        self._unread = 0  # bytes handed to h11 since the handler last waited for more
        self._client_gone = False
        self._watch: trio.CancelScope | None = None

    async def _read_forever(self) -> None:
        try:
            while True:
                if self._unread >= MAX_PIPELINED_BYTES:
                    await self._reader_resume.wait()
                    continue
                try:
                    data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self.conn.receive_data(data)
                self._unread += len(data)
                self._data_arrived.wake()
                if not data:
                    break
        except Exception as exc:
            # Raised from here, it would take the server's connection nursery down with it.
            log_event(
                "internal_error",
                f"unexpected error while reading from a client: {exc!r}",
                level=logging.ERROR,
                exc_info=True,
            )
        self._client_gone = True
        self._data_arrived.wake()
        if self._watch is not None:
            self._watch.cancel()

    async def _wait_for_data(self) -> None:
        """Until the reader has handed h11 more bytes (or the end of the stream)."""
        if self._unread >= MAX_PIPELINED_BYTES:
            self._reader_resume.wake()
        self._unread = 0
        if self._client_gone:
            # Everything, the end included, is with h11 already: nothing more will come.
            raise ClientGone("client went away")
        await self._data_arrived.wait()

    # ---- plumbing ----------------------------------------------------------------------------

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                await self._wait_for_data()
                continue
            return event  # type: ignore[return-value]

    async def _respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: tuple[bytes, bytes] = JSON,
        close: bool = False,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [content_type, (b"content-length", str(len(body)).encode()), *extra]
        if close or self.frontend.closing:
            headers.append((b"connection", b"close"))
        # One write for the whole answer.
        data = self.conn.send(h11.Response(status_code=status, headers=headers)) or b""
        data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def _respond_error(self, error: LlmuxError, *, close: bool = False) -> None:
        """The one place an error becomes a response (status, body, headers: llmux.errors)."""
        await self._respond(error.status, error.body(), close=close, extra=error.headers())

    # ---- the connection loop ----------------------------------------------------------------

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_forever)
            try:
                await self._serve()
            finally:
                nursery.cancel_scope.cancel()

    async def _serve(self) -> None:
        try:
            first = True
            while await self._serve_one(first):
                first = False
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                else:
                    break
        except h11.RemoteProtocolError as exc:
            await self._answer_protocol_error(exc)
        except (ClientGone, CutConnection, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # nobody to answer; the connection is closed on the way out
        except Exception as exc:
            # A bug must cost this one connection, never the server and everyone else on it.
            log_event(
                "internal_error",
                f"unexpected error while serving a connection: {exc!r}",
                level=logging.ERROR,
                exc_info=True,
            )
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await self._respond_error(
                        LlmuxError(ErrorKind.INTERNAL, "Internal error in llmux"), close=True
                    )
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _serve_one(self, first: bool) -> bool:
        """Serve one request; False when the connection should close."""
        # Waiting for a request is the only time a connection may be dropped at will: by the
        # keep-alive timeout, or because the server is closing. A new connection, or one that
        # has started sending a request, gets only the (short) header timeout.
        event = self.conn.next_event()
        if event is h11.NEED_DATA:
            now = trio.current_time()
            pending = bool(self.conn.trailing_data[0])
            wait = self.limits.keepalive_idle_secs
            if first or pending:
                wait = self.limits.header_timeout_secs
            idle = trio.CancelScope(deadline=now + wait)
            if self.frontend.closing:
                idle.cancel()
            self.frontend._idle.add(idle)
            try:
                with idle:
                    event = await self._next_request(idle)
            finally:
                self.frontend._idle.discard(idle)
            if idle.cancelled_caught:
                if self.conn.trailing_data[0] and not self.frontend.closing:
                    await self._answer_and_close(
                        LlmuxError(
                            ErrorKind.CLIENT_TOO_SLOW, "Timed out reading the request headers"
                        )
                    )
                return False
        else:
            # Pipelined, so already here. Writes to the client do not yield (see _SocketIO):
            # without this, a pipe full of requests answered locally would hold the loop.
            await trio.lowlevel.checkpoint()
        if isinstance(event, h11.Request):
            await self._handle(event)
            return not self.frontend.closing
        return False

    async def _next_request(self, idle: trio.CancelScope) -> h11.Event | type[h11.PAUSED]:
        """The next event once more bytes came (the caller has just seen NEED_DATA)."""
        while True:
            await self._wait_for_data()
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if idle.deadline - trio.current_time() > self.limits.header_timeout_secs:
                # Part of a request: the rest of its headers must follow promptly. (A request
                # that came whole, the usual case, never moves the deadline.)
                idle.deadline = trio.current_time() + self.limits.header_timeout_secs

    async def _answer_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        kind = _PROTOCOL_ERRORS.get(exc.error_status_hint, ErrorKind.BAD_REQUEST)
        await self._answer_and_close(LlmuxError(kind, f"Malformed HTTP request: {exc}"))

    async def _answer_and_close(self, error: LlmuxError) -> None:
        """Answer a request that h11 never parsed (garbled, or never finished), on this same
        connection: h11 lets a server send a response from IDLE, after the client's error."""
        with contextlib.suppress(
            ClientGone, trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError
        ):
            await self._respond_error(error, close=True)

    # ---- requests ----------------------------------------------------------------------------

    async def _read_body(self) -> bytes:
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        chunks: list[bytes] = []
        size = 0
        limit = self.limits.max_body_bytes
        while True:
            # A small body usually came with its headers: no timer needed to take it.
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(self.limits.body_timeout_secs) as waiting:
                    event = await self._next_event()
                if waiting.cancelled_caught:
                    raise LlmuxError(
                        ErrorKind.CLIENT_TOO_SLOW, "Timed out reading the request body"
                    )
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise LlmuxError(
                        ErrorKind.BODY_TOO_LARGE, f"Request body larger than {limit} bytes"
                    )
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ClientGone("client closed the connection mid-body")

    async def _handle(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        method = request.method
        # Once: iterating h11's Headers goes through Sequence.__iter__, item by item.
        headers = list(request.headers)
        try:
            if len(headers) > self.limits.max_headers:
                raise LlmuxError(
                    ErrorKind.HEADERS_TOO_LARGE,
                    f"More than {self.limits.max_headers} request headers",
                )
            # h11 bounds only a head that arrives in pieces; one that came whole is measured here.
            head_size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in headers)
            if head_size > self.limits.max_header_bytes:
                raise LlmuxError(
                    ErrorKind.HEADERS_TOO_LARGE,
                    f"Request headers larger than {self.limits.max_header_bytes} bytes",
                )
            if self.frontend.api_keys and path not in _OPEN_PATHS:
                presented = presented_key(headers)
                if not key_is_valid(presented, self.frontend.api_keys):
                    why = "Invalid API key" if presented is not None else "Missing API key"
                    raise LlmuxError(
                        ErrorKind.UNAUTHENTICATED,
                        f"{why}: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
                    )
            body = await self._read_body()
            if method == b"GET" and path == b"/v1/models":
                await self._respond(200, self.frontend.models_listing)
            elif method == b"GET" and path == b"/metrics":
                await self._respond(
                    200,
                    self.frontend.metrics.render(),
                    content_type=(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                )
            elif method == b"GET" and path == b"/health":
                await self._respond(200, b'{"status":"ok"}')
            elif path == b"/llmux" or path.startswith(b"/llmux/"):
                await self._llmux_api(request, path, body)
            else:
                await self._proxy(request, headers, body)
        except LlmuxError as exc:
            # A refused body was not read to its end, so the connection cannot be reused.
            await self._respond_error(exc, close=self.conn.their_state is not h11.DONE)

    # ---- /llmux/: see and steer ---------------------------------------------------------------

    async def _llmux_api(self, request: h11.Request, path: bytes, body: bytes) -> None:
        scheduler = self.frontend.scheduler
        if scheduler is None:
            raise LlmuxError(ErrorKind.NOT_FOUND, "The control API is not available here")
        method = request.method
        route = path.decode("ascii", "replace").removeprefix("/llmux").strip("/").split("/")
        if route == [""] and method == b"GET":
            await self._respond(200, ui_page(), content_type=HTML)
        elif route == ["status"] and method == b"GET":
            status = build_status(
                self.frontend.models, scheduler, self.frontend.telemetry.journal, _now()
            )
            await self._respond(200, msgspec.json.encode(status))
        elif route == ["events"] and method == b"GET":
            await self._stream_events()
        elif len(route) == 3 and route[0] == "models" and route[2] in ("wake", "sleep"):
            if method != b"POST":
                raise LlmuxError(
                    ErrorKind.METHOD_NOT_ALLOWED, f"Use POST for /llmux/models/NAME/{route[2]}"
                )
            model = route[1]
            if model not in self.frontend.models:
                raise LlmuxError(ErrorKind.MODEL_NOT_FOUND, f"Model not found: {model}")
            command = control.wake if route[2] == "wake" else control.sleep
            answer = await command(scheduler, model, _wait_secs(request.target))
            await self._respond(answer[0], msgspec.json.encode(answer[1]))
        elif route == ["pin"] and method == b"POST":
            model = extract_model(body)
            if model not in self.frontend.models:
                raise LlmuxError(ErrorKind.MODEL_NOT_FOUND, f"Model not found: {model}")
            answer = await control.pin(scheduler, model, _wait_secs(request.target))
            await self._respond(answer[0], msgspec.json.encode(answer[1]))
        elif route == ["unpin"] and method == b"POST":
            answer = await control.unpin(scheduler)
            await self._respond(answer[0], msgspec.json.encode(answer[1]))
        else:
            where = path.decode("ascii", "replace")
            raise LlmuxError(
                ErrorKind.NOT_FOUND, f"Not found: {method.decode('ascii', 'replace')} {where}"
            )

    async def _stream_events(self) -> None:
        """Server-Sent Events: the journal so far, then each transition as it happens."""
        journal = self.frontend.telemetry.journal
        with journal.subscribe() as (history, live):
            await self._send(
                h11.Response(
                    status_code=200,
                    headers=[
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                    ],
                )
            )

            async def relay() -> None:
                await self._send(h11.Data(data=b"".join(map(_sse, history)) or b": hello\n\n"))
                while not self.frontend.closing:
                    with trio.move_on_after(SSE_KEEPALIVE_SECS):
                        try:
                            entry = await live.receive()
                        except trio.EndOfChannel:
                            # Shutting down, or too slow a reader (it reconnects and replays).
                            return
                        await self._send(h11.Data(data=_sse(entry)))
                        continue
                    await self._send(h11.Data(data=b": keep-alive\n\n"))

            await self._while_client_connected(relay)
            await self._send(h11.EndOfMessage())

    async def _proxy(
        self, request: h11.Request, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        model = extract_model(body)
        actor = self.frontend.models.get(model)
        if actor is None:
            raise LlmuxError(ErrorKind.MODEL_NOT_FOUND, f"Model not found: {model}")
        req_id = self.frontend.next_request_id()
        progress = ProxiedRequest(req_id, model, trio.current_time())
        ticket = actor.acquire(req_id)
        self.frontend.in_progress[req_id] = progress
        try:

            async def serve() -> None:
                outcome = await ticket.wait()
                progress.waited = outcome.waited
                if isinstance(outcome, Reject):
                    error = LlmuxError.from_reject(outcome)
                    progress.status = error.status
                    await self._respond_error(error)
                    return
                await self._forward(request, headers, body, actor, progress)

            await self._while_client_connected(serve)
        finally:
            actor.finish(req_id)
            del self.frontend.in_progress[req_id]
            progress.duration = trio.current_time() - progress.started
            self.frontend.telemetry.request_finished(progress)

    async def _forward(
        self,
        request: h11.Request,
        request_headers: list[tuple[bytes, bytes]],
        body: bytes,
        actor: ModelActor,
        progress: ProxiedRequest,
    ) -> None:
        """Relay the backend's response as it arrives, noting in `progress` what was sent."""
        headers = forwardable(request_headers)
        try:
            async with self.frontend.pool.request(
                actor.config.port, request.method, request.target, headers, body
            ) as response:
                response_headers = forwardable(response.headers)
                if self.frontend.closing:
                    response_headers.append((b"connection", b"close"))
                if _has_length(response.headers):
                    length = _content_length(response.headers)
                    response_headers.append((b"content-length", length))
                else:
                    progress.streamed = True  # relayed as it comes (chunked, SSE)
                head = h11.Response(
                    status_code=response.status_code,
                    headers=response_headers,
                    reason=response.reason,
                )
                # Everything that has arrived goes out in one write, and a write happens
                # before every wait for the backend: one syscall for a small response, and a
                # stream's events are never held back.
                out = [self.conn.send(head) or b""]
                while True:
                    chunks, complete = response.ready_body()
                    for chunk in chunks:
                        progress.bytes_sent += len(chunk)
                        out.append(self.conn.send(h11.Data(data=chunk)) or b"")
                    if complete:
                        out.append(self.conn.send(h11.EndOfMessage()) or b"")
                    data = b"".join(out)
                    if data:
                        await self.stream.send_all(data)
                    if complete:
                        # Only now: a client that leaves mid-response is recorded as 499.
                        progress.status = response.status_code
                        return
                    out = []
                    await response.receive_more()
        except UpstreamError as exc:
            if isinstance(exc, BackendUnreachable):
                # Nobody listens where an Active model should: let its core judge (it may
                # take the model out of service, so that the next request wakes it again).
                actor.unreachable(progress.req_id, str(exc))
            if self.conn.our_state is not h11.SEND_RESPONSE:
                # Headers are out: the only honest signal left is to cut the connection.
                raise CutConnection(f"backend broke mid-response: {exc}") from exc
            error = LlmuxError(ErrorKind.BACKEND_ERROR, f"Backend error: {exc}")
            progress.status = error.status
            await self._respond_error(error)

    async def _while_client_connected(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work`, cancelling it the moment the client hangs up (the reader sees it)."""
        scope = trio.CancelScope()
        if self._client_gone:
            scope.cancel()
        self._watch = scope
        try:
            with scope:
                await work()
        finally:
            self._watch = None
        if scope.cancelled_caught and self.conn.our_state is not h11.DONE:
            raise ClientGone("client went away")


def _now() -> float:
    return trio.current_time()


def _sse(entry: dict[str, Any]) -> bytes:
    return b"event: transition\ndata: " + msgspec.json.encode(entry) + b"\n\n"


def _wait_secs(target: bytes) -> float | None:
    """`?wait=SECONDS` (0: answer at once); by default wait until done."""
    query = target.partition(b"?")[2]
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"wait":
            try:
                return max(0.0, float(value))
            except ValueError:
                raise LlmuxError(
                    ErrorKind.BAD_REQUEST, "`wait` must be a number of seconds"
                ) from None
    return None


@functools.cache
def ui_page() -> bytes:
    try:
        return resources.files("llmux.ui").joinpath("index.html").read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        return b"<!doctype html><title>llmux</title><p>The status page is not installed."


def _has_length(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"content-length" for name, _ in headers)


def _content_length(headers: list[tuple[bytes, bytes]]) -> bytes:
    return next(value for name, value in headers if name == b"content-length")
