"""Pooled HTTP/1.1 client for the backends, over plain non-blocking sockets driven by trio.

A connection is in exactly one place at a time: borrowed by one `request`, idle in its port's
pool, or closed. It goes back to the pool only when the exchange finished cleanly on both
sides; every other exit (error, cancellation, unread body, `connection: close`) closes it, so
no path can hand a half-used connection to the next request.

Reusing an idle connection races with the backend closing it; a failure before the first
response byte is therefore retried once on a fresh connection. After any response byte the
backend may have acted on the request, so nothing is retried.

The HTTP/1.1 framing on this side is our own (`llmux.upstream.reader`, and the request head
built as bytes), not h11: the peer is a backend we were configured to use, the messages are
simple, and h11's per-event machinery was the largest single cost of a proxied request. The parser
follows h11's grammar and rules (checked against h11 by a property test) and fails closed:
anything it does not understand is an `UpstreamError`. See docs/upstream-client.md.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType

import trio

from llmux.upstream.connection import _Connection
from llmux.upstream.errors import BackendUnreachable, _NoResponse
from llmux.upstream.reader import (
    _FIELD_VALUE_RE,
    _FRAMING_HEADERS,
    _TARGET_RE,
    _TOKEN_RE,
    ResponseHead,
    _comma_tokens,
)


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

    __slots__ = ("_conn", "headers", "http_version", "reason", "status_code")

    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: bytes

    def __init__(self, head: ResponseHead, conn: _Connection) -> None:
        self.status_code = head.status_code
        self.reason = head.reason
        self.headers = head.headers
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


class _Exchange:
    """`UpstreamPool.request`'s context manager (a class: cheaper than a generator-based one)."""

    __slots__ = ("_args", "_conn", "_pool", "_port")

    def __init__(
        self, pool: UpstreamPool, port: int, args: tuple[bytes, bytes, bytes, bool]
    ) -> None:
        self._pool = pool
        self._port = port
        self._args = args
        self._conn: _Connection | None = None

    async def __aenter__(self) -> UpstreamResponse:
        conn, head = await self._pool._exchange(self._port, *self._args)
        self._conn = conn
        return UpstreamResponse(head, conn)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        if exc is not None:
            conn.close()
            return
        self._pool._release(self._port, conn)


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
        self._hosts: dict[int, bytes] = {}
        self._closed = False

    def request(
        self,
        port: int,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> _Exchange:
        """Send one request; `async with` it to get the response once its head has arrived.

        Raises ValueError for a method, target or header that HTTP/1.1 cannot carry (h11 would
        have refused them too; a request parsed by h11 never has one).
        """
        host = self._hosts.get(port)
        if host is None:
            host = self._hosts[port] = self._where(port).encode("ascii")
        # Checked piece by piece, as h11 did: nothing caller-supplied may inject a line or
        # desynchronise the framing.
        if _TOKEN_RE.fullmatch(method) is None or _TARGET_RE.fullmatch(target) is None:
            raise ValueError(f"cannot send {method!r} {target!r} as HTTP/1.1")
        parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        close_after = False
        for name, value in headers:
            lower = name.lower()
            if lower in _FRAMING_HEADERS:
                continue
            if _TOKEN_RE.fullmatch(name) is None or _FIELD_VALUE_RE.fullmatch(value) is None:
                raise ValueError(f"cannot send header {name!r}: {value!r} as HTTP/1.1")
            if lower == b"connection" and b"close" in _comma_tokens(value):
                close_after = True
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        return _Exchange(self, port, (method, b"".join(parts), body, close_after))

    def idle_count(self, port: int) -> int:
        return len(self._idle.get(port, ()))

    async def aclose(self) -> None:
        """Close every idle connection; connections in use are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        await trio.lowlevel.checkpoint()

    async def _exchange(
        self, port: int, method: bytes, head: bytes, body: bytes, close_after: bool
    ) -> tuple[_Connection, ResponseHead]:
        # Nothing below is sure to wait before the request is out: a cancelled caller must not
        # reach the backend.
        await trio.lowlevel.checkpoint_if_cancelled()
        reused = self._checkout(port)
        if reused is not None:
            try:
                return reused, await self._send(reused, method, head, body, close_after)
            except _NoResponse:
                pass  # The backend closed it while idle: normal, try a fresh one.
        fresh = await self._connect(port)
        try:
            return fresh, await self._send(fresh, method, head, body, close_after)
        except _NoResponse as exc:
            # A new connection dropped before a byte of answer: the backend is going away (a
            # connection the kernel accepted just before the process died is reset). It says
            # what a refused connection says, and counts as one for the model's health.
            raise BackendUnreachable(
                f"cannot connect to backend on {self._where(port)}: {exc}"
            ) from exc

    @staticmethod
    async def _send(
        conn: _Connection, method: bytes, head: bytes, body: bytes, close_after: bool
    ) -> ResponseHead:
        try:
            conn.close_after = close_after
            await conn.send_request(method, head, body)
            return await conn.receive_head()
        except BaseException:
            conn.close()
            raise

    def _checkout(self, port: int) -> _Connection | None:
        idle = self._idle.get(port)
        while idle:
            conn = idle.pop()
            if not conn.looks_closed():
                return conn
            conn.close()
        return None

    async def _connect(self, port: int) -> _Connection:
        where = self._where(port)
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(self._host, port)
        except trio.TooSlowError:
            raise BackendUnreachable(
                f"cannot connect to backend on {where}: timed out after {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise BackendUnreachable(
                f"cannot connect to backend on {where}: {_reason(exc)}"
            ) from exc
        # trio set it up (non-blocking, TCP_NODELAY); from here on we drive the socket
        # ourselves, without the checkpoints trio's streams add around every call.
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(False)
        return _Connection(sock, where)

    def _release(self, port: int, conn: _Connection) -> None:
        if self._closed or not conn.reusable():
            conn.close()
            return
        idle = self._idle.get(port)
        if idle is None:
            idle = self._idle[port] = deque()
        idle.append(conn)
        if len(idle) > self._max_idle:
            # The oldest idle connection is the likeliest to have been closed by the backend.
            idle.popleft().close()

    def _where(self, port: int) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{port}"


def _reason(exc: OSError) -> str:
    """'Connection refused' rather than trio's 'all attempts to connect ... failed'."""
    cause = exc.__cause__
    errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
    reasons = [(e.strerror or str(e)) if isinstance(e, OSError) else str(e) for e in errors]
    return "; ".join(dict.fromkeys(reasons))
