"""Pooled HTTP/1.1 client for the backends, over plain non-blocking sockets driven by trio.

A connection is in exactly one place at a time: borrowed by one `request`, idle in its port's
pool, or closed. It goes back to the pool only when the exchange finished cleanly on both
sides; every other exit (error, cancellation, unread body, `connection: close`) closes it, so
no path can hand a half-used connection to the next request.

Reusing an idle connection races with the backend closing it; a failure before the first
response byte is therefore retried once on a fresh connection. After any response byte the
backend may have acted on the request, so nothing is retried.

The HTTP/1.1 framing on this side is our own (`_ResponseReader`, and the request head built
as bytes), not h11: the peer is a backend we were configured to use, the messages are simple,
and h11's per-event machinery was the largest single cost of a proxied request. The parser
follows h11's grammar and rules (checked against h11 by a property test) and fails closed:
anything it does not understand is an `UpstreamError`. See docs/upstream-client.md.
"""

from __future__ import annotations

import re
import select
import socket
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType

import trio

RECEIVE_SIZE = 65536
# Up to this size the head and body go out in one write (one syscall, one segment on loopback);
# beyond it, copying the body to prepend the head costs more than a second write.
COALESCE_LIMIT = 65536
# A response head (or chunk-size line, or trailer section) still incomplete at this size is
# refused, as h11's default `max_incomplete_event_size` did.
MAX_HEAD_BYTES = 16384

# Framing is the pool's job: a caller-supplied value could desynchronise the connection.
_FRAMING_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})

# The grammar is h11's (RFC 9110/9112 as h11 reads them), so both accept the same responses.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR = rb"[^\x00\s]"
_FIELD_VALUE = rb"(?:" + _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR + rb"+)*)?"
_FIELD_LINE = rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*"
_FIELD_LINE_NO_GROUPS = _TOKEN + rb":[ \t]*" + _FIELD_VALUE + rb"[ \t]*"
_STATUS_LINE = rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|" + _FIELD_VCHAR + rb")*))?"
# A whole head in one match (status line, then header lines, each ended by LF or CRLF), so
# the common case costs two regex passes in C rather than one per line.
_HEAD_RE = re.compile(_STATUS_LINE + rb"\r?\n((?:" + _FIELD_LINE_NO_GROUPS + rb"\r?\n)*)")
_FIELDS_RE = re.compile(_FIELD_LINE + rb"\r?\n")
_STATUS_LINE_RE = re.compile(_STATUS_LINE)
_FIELD_LINE_RE = re.compile(_FIELD_LINE)
_OBS_FOLD_RE = re.compile(rb"[ \t]+")
_HEAD_END_RE = re.compile(rb"\n\r?\n")
_CHUNK_HEADER_RE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_DIGITS_RE = re.compile(rb"[0-9]+")
_TOKEN_RE = re.compile(_TOKEN)
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE_RE = re.compile(_FIELD_VALUE)

# Body framing of the response being read.
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _COMPLETE = range(4)
# Where a chunked body is: a chunk-size line, chunk data, the CRLF after it, the trailer.
_SIZE, _DATA, _FOOTER, _TRAILER = range(4)


class UpstreamError(Exception):
    """Backend unreachable, or it broke the HTTP protocol / closed mid-response."""


class BackendUnreachable(UpstreamError):
    """No connection could be made: nothing listens on the port, or the connect timed out.
    Nothing was sent, and for an Active model this is a sign its backend is gone."""


class _NoResponse(UpstreamError):
    """The connection failed before any response byte arrived, so a retry is safe."""


class MalformedResponse(Exception):
    """The bytes from the backend are not an HTTP/1.1 response we can relay."""


class ResponseHead:
    """A final (non-1xx) response head; names lower-cased, framing headers normalised as h11
    does (one content-length, `transfer-encoding: chunked` lower-cased)."""

    __slots__ = ("headers", "http_version", "reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.http_version = http_version
        self.headers = headers


class _Framing:
    __slots__ = ("chunked", "content_length", "keep_alive")

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True


def _normalise(fields: list[tuple[bytes, bytes]], framing: _Framing) -> list[tuple[bytes, bytes]]:
    """Lower-case the names and check the framing headers, as h11's normalize_and_validate."""
    out: list[tuple[bytes, bytes]] = []
    seen_length: bytes | None = None
    for raw_name, value in fields:
        name = raw_name.lower()
        if name == b"content-length":
            lengths = {length.strip() for length in value.split(b",")}
            if len(lengths) != 1:
                raise MalformedResponse("conflicting Content-Length headers")
            value = lengths.pop()
            if not _DIGITS_RE.fullmatch(value) or len(value) > 20:
                raise MalformedResponse(f"bad Content-Length: {value!r}")
            if seen_length is None:
                seen_length = value
                framing.content_length = int(value)
                out.append((name, value))
            elif seen_length != value:
                raise MalformedResponse("conflicting Content-Length headers")
            continue
        if name == b"transfer-encoding":
            if framing.chunked:
                raise MalformedResponse("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise MalformedResponse(
                    f"only Transfer-Encoding: chunked is supported, not {value!r}"
                )
            framing.chunked = True
        elif name == b"connection" and b"close" in _comma_tokens(value):
            framing.keep_alive = False
        out.append((name, value))
    return out


def _comma_tokens(value: bytes) -> list[bytes]:
    return [token.strip() for token in value.lower().split(b",")]


def _field_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Header (or trailer) lines without their line ends; obsolete line folding is joined."""
    folded: list[bytes] = []
    for line in lines:
        match = _OBS_FOLD_RE.match(line)
        if match:
            if not folded:
                raise MalformedResponse("continuation line at start of headers")
            folded[-1] += b" " + line[match.end() :]
        else:
            folded.append(line)
    fields = []
    for line in folded:
        field = _FIELD_LINE_RE.fullmatch(line)
        if field is None:
            raise MalformedResponse(f"illegal header line: {line!r}")
        fields.append((field[1], field[2]))
    return fields


def _split_lines(block: bytes) -> list[bytes]:
    """Lines of a block that ends with a line end, each without its LF or CRLF."""
    lines = block.split(b"\n")
    lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _parse_head(
    block: bytes, framing: _Framing
) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    """Status code, reason, version, headers of a head (`block` ends with its last line's end)."""
    whole = _HEAD_RE.fullmatch(block)
    if whole is not None:
        version, status, reason = whole[1], whole[2], whole[3]
        fields = _FIELDS_RE.findall(whole[4])
    else:
        # Folded header lines, or a malformed head: the line-by-line path says which.
        lines = _split_lines(block)
        status_line = _STATUS_LINE_RE.fullmatch(lines[0])
        if status_line is None:
            raise MalformedResponse(f"illegal status line: {lines[0]!r}")
        version, status, reason = status_line[1], status_line[2], status_line[3]
        fields = _field_lines(lines[1:])
    headers = _normalise(fields, framing)
    if version < b"1.1":
        framing.keep_alive = False
    return int(status), reason or b"", version, headers


class _ResponseReader:
    """Sans-IO reader of one response at a time: `feed` it bytes (b"" for end of stream),
    take the head with `head()`, then the body with `body()`.

    Raises `MalformedResponse` for anything h11 would refuse.
    """

    __slots__ = (
        "_buf",
        "_chunk_state",
        "_eof",
        "_footer_left",
        "_method",
        "_mode",
        "_pos",
        "_remaining",
        "_searched",
        "keep_alive",
    )

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        # How far the buffer has been searched for the end of a head, a chunk-size line or
        # a trailer section: a slow peer's pieces are not rescanned from the start each time.
        self._searched = 0
        self._eof = False
        self.start(b"GET")

    def start(self, method: bytes) -> None:
        """Expect the response to a request with this method."""
        self._method = method
        self._mode = _LENGTH
        self._remaining = 0
        self._chunk_state = _SIZE
        self._footer_left = 0
        self.keep_alive = True

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
            self._searched = 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._searched = max(0, self._searched - self._pos)
            self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def complete(self) -> bool:
        return self._mode == _COMPLETE

    def head(self) -> ResponseHead | None:
        """The final response head once it is all here (1xx heads are skipped); else None."""
        while True:
            buf, pos = self._buf, self._pos
            if pos < len(buf) and buf[pos] < 0x21:
                # Also what h11 does: a response never starts with whitespace or a control.
                raise MalformedResponse(f"illegal status line: {buf[pos : pos + 40]!r}")
            end = _HEAD_END_RE.search(buf, max(pos, self._searched - 2))
            if end is None:
                self._searched = len(buf)
                if len(buf) - pos > MAX_HEAD_BYTES:
                    raise MalformedResponse(f"response head larger than {MAX_HEAD_BYTES} bytes")
                if self._eof:
                    raise MalformedResponse("peer unexpectedly closed connection")
                return None
            self._pos = end.end()
            self._searched = self._pos
            framing = _Framing()
            status, reason, version, headers = _parse_head(buf[pos : end.start() + 1], framing)
            if 100 <= status < 200:
                continue
            if status < 200:
                raise MalformedResponse(f"status code {status} is not a final response")
            self._frame(status, framing)
            return ResponseHead(status, reason, version, headers)

    def _frame(self, status: int, framing: _Framing) -> None:
        # RFC 9112 section 6.3, in h11's order: no body, then chunked, then length, then close.
        self.keep_alive = framing.keep_alive
        if self._method == b"CONNECT" and 200 <= status < 300:
            raise MalformedResponse("the backend accepted a CONNECT: tunnels are not relayed")
        if status in (204, 304) or self._method == b"HEAD":
            self._mode = _COMPLETE
        elif framing.chunked:
            self._mode = _CHUNKED
        elif framing.content_length is not None:
            self._remaining = framing.content_length
            self._mode = _LENGTH if self._remaining else _COMPLETE
        else:
            self._mode = _UNTIL_CLOSE
            self.keep_alive = False

    def body(self, out: list[bytes]) -> bool:
        """Append the body bytes that are here to `out`; True once the body is complete."""
        mode = self._mode
        if mode == _LENGTH:
            buf, pos = self._buf, self._pos
            available = len(buf) - pos
            if available:
                take = min(available, self._remaining)
                out.append(buf if take == len(buf) else buf[pos : pos + take])
                self._pos = pos + take
                self._remaining -= take
                if not self._remaining:
                    self._mode = _COMPLETE
                    return True
            if self._eof:
                raise MalformedResponse(
                    "peer closed connection without sending complete message body "
                    f"({self._remaining} of its bytes missing)"
                )
            return False
        if mode == _COMPLETE:
            return True
        if mode == _UNTIL_CLOSE:
            if self._pos < len(self._buf):
                out.append(self._buf[self._pos :] if self._pos else self._buf)
                self._pos = len(self._buf)
            if self._eof:
                self._mode = _COMPLETE
                return True
            return False
        return self._chunked_body(out)

    def _chunked_body(self, out: list[bytes]) -> bool:
        while True:
            buf, pos, state = self._buf, self._pos, self._chunk_state
            if state == _DATA:
                available = len(buf) - pos
                if not available:
                    break
                take = min(available, self._remaining)
                out.append(buf if take == len(buf) else buf[pos : pos + take])
                self._pos = pos + take
                self._remaining -= take
                if not self._remaining:
                    self._chunk_state = _FOOTER
                    self._footer_left = 2
            elif state == _SIZE:
                end = buf.find(b"\r\n", max(pos, self._searched - 1))
                if end < 0:
                    self._searched = len(buf)
                    if len(buf) - pos > MAX_HEAD_BYTES:
                        raise MalformedResponse("chunk-size line too long")
                    break
                line = _CHUNK_HEADER_RE.fullmatch(buf, pos, end + 2)
                if line is None:
                    raise MalformedResponse(f"illegal chunk header: {buf[pos : end + 2]!r}")
                self._pos = end + 2
                self._searched = self._pos
                self._remaining = int(line[1], 16)
                self._chunk_state = _DATA if self._remaining else _TRAILER
            elif state == _FOOTER:
                want = b"\r\n"[2 - self._footer_left :]
                got = buf[pos : pos + len(want)]
                if not got:
                    break
                if got != want[: len(got)]:
                    raise MalformedResponse(f"malformed chunk footer: {got!r}")
                self._pos = pos + len(got)
                self._footer_left -= len(got)
                if self._footer_left:
                    break
                self._chunk_state = _SIZE
            else:
                if buf[pos : pos + 1] == b"\n":
                    self._pos = pos + 1
                elif buf[pos : pos + 2] == b"\r\n":
                    self._pos = pos + 2
                else:
                    end_match = _HEAD_END_RE.search(buf, max(pos, self._searched - 2))
                    if end_match is None:
                        self._searched = len(buf)
                        if len(buf) - pos > MAX_HEAD_BYTES:
                            raise MalformedResponse("trailer section too long")
                        break
                    self._pos = end_match.end()
                    self._searched = self._pos
                    # Trailers are dropped, but checked: h11 would refuse bad ones.
                    trailers = _field_lines(_split_lines(buf[pos : end_match.start() + 1]))
                    _normalise(trailers, _Framing())
                self._mode = _COMPLETE
                return True
        if self._eof:
            raise MalformedResponse(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)"
            )
        return False


class _Connection:
    __slots__ = ("close_after", "fd", "reader", "sock", "where")

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.where = where
        self.reader = _ResponseReader()
        self.close_after = False

    async def send_request(self, method: bytes, head: bytes, body: bytes) -> None:
        self.reader.start(method)
        parts = [head + body] if len(body) <= COALESCE_LIMIT else [head, body]
        try:
            for part in parts:
                await self._send_all(part)
        except OSError as exc:
            raise _NoResponse(f"backend on {self.where} dropped the connection: {exc}") from exc

    async def _send_all(self, data: bytes) -> None:
        # Try first: a request almost always fits the socket buffer, and then no wait (and no
        # trip through the scheduler) is needed; the response is waited for right after.
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            view = view[sent:]

    async def receive_head(self) -> ResponseHead:
        """The final response head, skipping 1xx; `_NoResponse` if nothing came back."""
        got_bytes = False
        while True:
            try:
                head = self.reader.head()
            except MalformedResponse as exc:
                raise self._broke(exc) from exc
            if head is not None:
                return head
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
        while True:
            chunks, complete = self.ready_body()
            if chunks:
                # Pieces that arrived together are one chunk to the caller.
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if complete:
                return None
            await self._receive()

    def ready_body(self) -> tuple[list[bytes], bool]:
        """The body chunks already received, without waiting; True once the body is complete.

        Lets a relay send everything that has arrived in one write, and write only when it
        would otherwise wait: nothing is ever held back while more is awaited.
        """
        chunks: list[bytes] = []
        try:
            complete = self.reader.body(chunks)
        except MalformedResponse as exc:
            raise self._broke(exc) from exc
        return chunks, complete

    async def receive_more(self) -> None:
        """Wait for the next bytes from the backend (the body goes on: see `ready_body`)."""
        await self._receive()

    def reusable(self) -> bool:
        # Buffered bytes would be ones the backend sent unasked: the next exchange would
        # misread them as its response.
        reader = self.reader
        return (
            reader.complete and reader.keep_alive and not self.close_after and not reader.buffered
        )

    def looks_closed(self) -> bool:
        """Whether an idle connection has something to read, i.e. almost surely a FIN.

        Catching most keep-alive races here is one poll() call, far cheaper than sending the
        request and failing over after the round trip.
        """
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([self.fd], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        # Wakes (with ClosedResourceError) any task trio has waiting on the socket, and drops
        # trio's registration before the descriptor number can be reused.
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def _broke(self, exc: MalformedResponse) -> UpstreamError:
        return UpstreamError(f"backend on {self.where} broke the HTTP protocol: {exc}")

    async def _receive(self) -> bytes:
        # The backend has not answered yet whenever we get here (everything already received
        # was taken): wait first rather than fail a recv() with EAGAIN.
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = self.sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise UpstreamError(f"connection to backend on {self.where} lost: {exc}") from exc
            self.reader.feed(data)
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
        return fresh, await self._send(fresh, method, head, body, close_after)

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
