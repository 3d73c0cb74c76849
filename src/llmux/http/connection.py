"""One client connection: h11 over a socket, keep-alive, pipelining, timeouts and limits.

The handler (the connection's own task) serves requests one at a time, and a reader task owns
the socket's receiving side for the connection's life. The reader hands bytes to h11 and
wakes the handler when it waits for them. Because it reads all the time, a client that hangs
up is noticed while its request waits in a queue or streams (the reader cancels the work run
by `while_client_connected`), and a pipelined next request is taken in; while a request is
being answered it reads at most MAX_PIPELINED_BYTES ahead and then stops (not watching either,
as a client that floods the pipe is no reason to buffer). One long-lived task per connection
costs far less than a watcher task per request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import h11
import trio

from llmux.errors import ClientGone, CutConnection, ErrorKind, LlmuxError
from llmux.http.limits import PROTOCOL_ERRORS, check_head
from llmux.observability.logs import log_event
from llmux.transport.socket_stream import RECEIVE_SIZE, SocketStream, Wakeup

if TYPE_CHECKING:
    from llmux.http.server import HttpServer

# Bytes of a pipelined next request we are willing to hold while answering this one.
MAX_PIPELINED_BYTES = 64 * 1024
JSON = (b"content-type", b"application/json")


class HttpConnection:
    def __init__(self, stream: trio.abc.Stream, server: HttpServer) -> None:
        if isinstance(stream, trio.SocketStream):
            stream = SocketStream.adopt(stream)
        self.stream = stream
        self.server = server
        self.limits = server.limits
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self._data_arrived = Wakeup()
        self._reader_resume = Wakeup()
        self._unread = 0  # bytes handed to h11 since the handler last waited for more
        self._client_gone = False
        self._watch: trio.CancelScope | None = None

    @property
    def closing(self) -> bool:
        """The server is shutting down: answer, then close."""
        return self.server.closing

    # ---- the reader ----------------------------------------------------------------------

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
                self.h11.receive_data(data)
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

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                await self._wait_for_data()
                continue
            return event  # type: ignore[return-value]

    # ---- what routes use -------------------------------------------------------------------

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: tuple[bytes, bytes] = JSON,
        close: bool = False,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [content_type, (b"content-length", str(len(body)).encode()), *extra]
        if close or self.server.closing:
            headers.append((b"connection", b"close"))
        # One write for the whole answer.
        data = self.h11.send(h11.Response(status_code=status, headers=headers)) or b""
        data += self.h11.send(h11.Data(data=body)) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def respond_error(self, error: LlmuxError, *, close: bool = False) -> None:
        """The one place an error becomes a response (status, body, headers: llmux.errors)."""
        await self.respond(error.status, error.body(), close=close, extra=error.headers())

    async def while_client_connected(self, work: Callable[[], Awaitable[None]]) -> None:
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
        if scope.cancelled_caught and self.h11.our_state is not h11.DONE:
            raise ClientGone("client went away")

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
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
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
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    error = LlmuxError(ErrorKind.INTERNAL, "Internal error in llmux")
                    await self.respond_error(error, close=True)
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _serve_one(self, first: bool) -> bool:
        """Serve one request; False when the connection should close."""
        # Waiting for a request is the only time a connection may be dropped at will: by the
        # keep-alive timeout, or because the server is closing. A new connection, or one that
        # has started sending a request, gets only the (short) header timeout.
        event = self.h11.next_event()
        if event is h11.NEED_DATA:
            pending = bool(self.h11.trailing_data[0])
            wait = self.limits.keepalive_idle_secs
            if first or pending:
                wait = self.limits.header_timeout_secs
            idle = trio.CancelScope(deadline=trio.current_time() + wait)
            if self.server.closing:
                idle.cancel()
            self.server.idle.add(idle)
            try:
                with idle:
                    event = await self._next_request(idle)
            finally:
                self.server.idle.discard(idle)
            if idle.cancelled_caught:
                if self.h11.trailing_data[0] and not self.server.closing:
                    why = "Timed out reading the request headers"
                    await self._answer_and_close(LlmuxError(ErrorKind.CLIENT_TOO_SLOW, why))
                return False
        else:
            # Pipelined, so already here. Writes to the client do not yield (SocketStream):
            # without this, a pipe full of requests answered locally would hold the loop.
            await trio.lowlevel.checkpoint()
        if isinstance(event, h11.Request):
            await self._handle(event)
            return not self.server.closing
        return False

    async def _next_request(self, idle: trio.CancelScope) -> h11.Event | type[h11.PAUSED]:
        """The next event once more bytes came (the caller has just seen NEED_DATA)."""
        while True:
            await self._wait_for_data()
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if idle.deadline - trio.current_time() > self.limits.header_timeout_secs:
                # Part of a request: the rest of its headers must follow promptly. (A request
                # that came whole, the usual case, never moves the deadline.)
                idle.deadline = trio.current_time() + self.limits.header_timeout_secs

    async def _answer_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        kind = PROTOCOL_ERRORS.get(exc.error_status_hint, ErrorKind.BAD_REQUEST)
        await self._answer_and_close(LlmuxError(kind, f"Malformed HTTP request: {exc}"))

    async def _answer_and_close(self, error: LlmuxError) -> None:
        """Answer a request that h11 never parsed (garbled, or never finished), on this same
        connection: h11 lets a server send a response from IDLE, after the client's error."""
        with contextlib.suppress(
            ClientGone, trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError
        ):
            await self.respond_error(error, close=True)

    # ---- one request -------------------------------------------------------------------------

    async def _handle(self, request: h11.Request) -> None:
        # Once: iterating h11's Headers goes through Sequence.__iter__, item by item.
        headers = list(request.headers)
        try:
            check_head(request, headers, self.limits)
            self.server.router.admit(request.target.split(b"?", 1)[0], headers)
            body = await self._read_body(headers)
            await self.server.router.route(self, request, headers, body)
        except LlmuxError as exc:
            # A refused body was not read to its end, so the connection cannot be reused.
            await self.respond_error(exc, close=self.h11.their_state is not h11.DONE)

    async def _read_body(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        # A client that sent `expect: 100-continue` without a body has nothing to wait for
        # (RFC 9110 §10.1.1: the server may then omit the interim response): no 100.
        if self.h11.they_are_waiting_for_100_continue and _declares_body(headers):
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        chunks: list[bytes] = []
        size = 0
        limit = self.limits.max_body_bytes
        while True:
            # A small body usually came with its headers: no timer needed to take it.
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(self.limits.body_timeout_secs) as waiting:
                    event = await self._next_event()
                if waiting.cancelled_caught:
                    why = "Timed out reading the request body"
                    raise LlmuxError(ErrorKind.CLIENT_TOO_SLOW, why)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    why = f"Request body larger than {limit} bytes"
                    raise LlmuxError(ErrorKind.BODY_TOO_LARGE, why)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ClientGone("client closed the connection mid-body")


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request head announces a body (chunked, or a non-zero length)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False
