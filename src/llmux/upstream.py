"""Pooled HTTP/1.1 client for the backends: h11 over plain trio sockets.

A connection is in exactly one place at a time: borrowed by one `request`, idle in its port's
pool, or closed. It goes back to the pool only when the exchange finished cleanly on both
sides; every other exit (error, cancellation, unread body, `connection: close`) closes it, so
no path can hand a half-used connection to the next request.

Reusing an idle connection races with the backend closing it; a failure before the first
response byte is therefore retried once on a fresh connection. After any response byte the
backend may have acted on the request, so nothing is retried.
"""

from __future__ import annotations

import select
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import trio

RECEIVE_SIZE = 65536
# Up to this size the head and body go out in one write (one syscall, one segment on loopback);
# beyond it, copying the body to prepend the head costs more than a second write.
COALESCE_LIMIT = 65536

# Framing is the pool's job: a caller-supplied value could desynchronise the connection.
_FRAMING_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
_FINISHED_STATES = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)


class UpstreamError(Exception):
    """Backend unreachable, or it broke the HTTP protocol / closed mid-response."""


class _NoResponse(UpstreamError):
    """The connection failed before any response byte arrived, so a retry is safe."""


class _Connection:
    __slots__ = ("h11", "stream", "where")

    def __init__(self, stream: trio.SocketStream, where: str) -> None:
        self.stream = stream
        self.where = where
        self.h11 = h11.Connection(h11.CLIENT)

    async def send_request(self, request: h11.Request, body: bytes) -> None:
        head = self.h11.send(request) or b""
        if body:
            # With content-length framing h11 writes the data verbatim; skip its copy.
            self.h11.send_with_data_passthrough(h11.Data(data=body))
        self.h11.send(h11.EndOfMessage())
        try:
            if len(body) <= COALESCE_LIMIT:
                await self.stream.send_all(head + body)
            else:
                await self.stream.send_all(head)
                await self.stream.send_all(body)
        except trio.BrokenResourceError as exc:
            raise _NoResponse(f"backend on {self.where} dropped the connection: {exc}") from exc

    async def receive_head(self) -> h11.Response:
        """The final response head, skipping 1xx; `_NoResponse` if nothing came back."""
        got_bytes = False
        while True:
            event = self._next_event()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.InformationalResponse):
                continue
            if event is not h11.NEED_DATA:
                raise UpstreamError(f"backend on {self.where} sent {event!r} instead of a response")
            try:
                data = await self._receive()
            except UpstreamError as exc:
                if got_bytes:
                    raise
                raise _NoResponse(str(exc)) from exc
            if not data and not got_bytes:
                raise _NoResponse(
                    f"backend on {self.where} closed the connection without responding"
                )
            got_bytes = True

    async def next_body_chunk(self) -> bytes | None:
        """The next piece of the body as soon as it arrives; None once the body is complete."""
        while self.h11.their_state not in _FINISHED_STATES:
            event = self._next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            if event is h11.NEED_DATA:
                await self._receive()
            else:
                raise UpstreamError(f"backend on {self.where} sent {event!r} inside a body")
        return None

    def ready_body(self) -> tuple[list[bytes], bool]:
        """The body chunks already received, without waiting; True once the body is complete.

        Lets a relay send everything that has arrived in one write, and write only when it
        would otherwise wait: nothing is ever held back while more is awaited.
        """
        chunks: list[bytes] = []
        while self.h11.their_state not in _FINISHED_STATES:
            event = self._next_event()
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return chunks, True
            elif event is h11.NEED_DATA:
                return chunks, False
            else:
                raise UpstreamError(f"backend on {self.where} sent {event!r} inside a body")
        return chunks, True

    async def receive_more(self) -> None:
        """Wait for the next bytes from the backend (the body goes on: see `ready_body`)."""
        await self._receive()

    def reusable(self) -> bool:
        # `trailing_data` would be bytes the backend sent unasked: the next exchange would
        # misread them as its response.
        return (
            self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
            and not self.h11.trailing_data[0]
        )

    def looks_closed(self) -> bool:
        """Whether an idle connection has something to read, i.e. almost surely a FIN.

        Catching most keep-alive races here is one poll() call, far cheaper than sending the
        request and failing over after the round trip.
        """
        fd = self.stream.socket.fileno()
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"backend on {self.where} broke the HTTP protocol: {exc}") from exc

    async def _receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError as exc:
            raise UpstreamError(f"connection to backend on {self.where} lost: {exc}") from exc
        self.h11.receive_data(data)
        return data


class _Body:
    """Async iterator over a response body (a class, not an async generator, so abandoning
    it mid-body needs no finalizer: the connection is owned by `request`, not by this)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._conn.next_body_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


class UpstreamResponse:
    """A response head; the body is read with `iter_body` while the `request` block is open."""

    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: bytes

    def __init__(self, head: h11.Response, conn: _Connection) -> None:
        self.status_code = head.status_code
        self.reason = head.reason
        self.headers = list(head.headers)
        self.http_version = head.http_version
        self._conn = conn

    def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive; raises UpstreamError if the backend breaks off."""
        return _Body(self._conn)

    def ready_body(self) -> tuple[list[bytes], bool]:
        """Body chunks that have arrived, without waiting, and whether the body is complete.

        With `receive_more`, the alternative to `iter_body` for a relay that writes
        everything it has in one go and writes before every wait.
        """
        return self._conn.ready_body()

    async def receive_more(self) -> None:
        """Wait until more of the body arrives (or the backend breaks off: UpstreamError)."""
        await self._conn.receive_more()


class UpstreamPool:
    """Keep-alive connections to backends on `host`, one LIFO idle list per port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        max_idle_per_port: int = 64,
        connect_timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._max_idle = max_idle_per_port
        self._connect_timeout = connect_timeout
        self._idle: dict[int, deque[_Connection]] = {}
        self._closed = False

    @asynccontextmanager
    async def request(
        self,
        port: int,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> AsyncIterator[UpstreamResponse]:
        """Send one request and yield the response once its head has arrived."""
        event = h11.Request(
            method=method, target=target, headers=self._request_headers(port, headers, body)
        )
        conn, head = await self._exchange(port, event, body)
        try:
            yield UpstreamResponse(head, conn)
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        await self._release(port, conn)

    def idle_count(self, port: int) -> int:
        return len(self._idle.get(port, ()))

    async def aclose(self) -> None:
        """Close every idle connection; connections in use are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await trio.aclose_forcefully(conn.stream)

    def _request_headers(
        self, port: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> list[tuple[bytes, bytes]]:
        kept = [(name, value) for name, value in headers if name.lower() not in _FRAMING_HEADERS]
        kept.append((b"host", self._where(port).encode("ascii")))
        kept.append((b"content-length", str(len(body)).encode("ascii")))
        return kept

    async def _exchange(
        self, port: int, request: h11.Request, body: bytes
    ) -> tuple[_Connection, h11.Response]:
        reused = await self._checkout(port)
        if reused is not None:
            try:
                return reused, await self._send(reused, request, body)
            except _NoResponse:
                pass  # The backend closed it while idle: normal, try a fresh one.
        fresh = await self._connect(port)
        return fresh, await self._send(fresh, request, body)

    @staticmethod
    async def _send(conn: _Connection, request: h11.Request, body: bytes) -> h11.Response:
        try:
            await conn.send_request(request, body)
            return await conn.receive_head()
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise

    async def _checkout(self, port: int) -> _Connection | None:
        idle = self._idle.get(port)
        while idle:
            conn = idle.pop()
            if not conn.looks_closed():
                return conn
            await trio.aclose_forcefully(conn.stream)
        return None

    async def _connect(self, port: int) -> _Connection:
        where = self._where(port)
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(self._host, port)
        except trio.TooSlowError:
            raise UpstreamError(
                f"cannot connect to backend on {where}: timed out after {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to backend on {where}: {_reason(exc)}") from exc
        return _Connection(stream, where)

    async def _release(self, port: int, conn: _Connection) -> None:
        if self._closed or not conn.reusable():
            await conn.stream.aclose()
            return
        conn.h11.start_next_cycle()
        idle = self._idle.setdefault(port, deque())
        idle.append(conn)
        if len(idle) > self._max_idle:
            # The oldest idle connection is the likeliest to have been closed by the backend.
            await trio.aclose_forcefully(idle.popleft().stream)

    def _where(self, port: int) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{port}"


def _reason(exc: OSError) -> str:
    """'Connection refused' rather than trio's 'all attempts to connect ... failed'."""
    cause = exc.__cause__
    errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
    reasons = [(e.strerror or str(e)) if isinstance(e, OSError) else str(e) for e in errors]
    return "; ".join(dict.fromkeys(reasons))
