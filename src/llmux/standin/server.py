"""The stand-in's HTTP server: trio + h11, keep-alive, one write per plain response."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import h11
import trio

from llmux.standin.protocol import (
    _CHAT_PATH,
    _CLOSE,
    _JSON,
    _SSE_HEADERS,
    _TEXT_PATH,
    MAX_BODY_BYTES,
    RECEIVE_SIZE,
    _BadRequest,
    _Completion,
    _completion_body,
    _encode,
    _error,
    _parse_completion,
    _sse_events,
)

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
