"""UpstreamPool against a tiny in-test h11 server whose behaviour each test scripts."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import pytest
import trio

from llmux.upstream import UpstreamError, UpstreamPool, UpstreamResponse

TIMEOUT = 5.0


@dataclass
class Exchange:
    """One request as the test server saw it, and the means to answer it."""

    conn: h11.Connection
    stream: trio.SocketStream
    request: h11.Request
    body: bytes
    connection_number: int  # 0 for the first connection the server accepted
    request_number: int  # 0 for the first request overall

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def respond(
        self,
        body: bytes = b"ok",
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        head = [(b"content-length", str(len(body)).encode()), *(headers or [])]
        await self.send(
            h11.Response(status_code=status, headers=head), h11.Data(data=body), h11.EndOfMessage()
        )


Script = Callable[[Exchange], Awaitable[None]]


async def answer_ok(exchange: Exchange) -> None:
    await exchange.respond(b"ok")


@dataclass
class Backend:
    """Serves `script` for each request; a script that leaves the response unfinished, or
    asks the client to close, ends the connection."""

    script: Script
    port: int = 0
    connections: int = 0
    ended: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    progress: trio.Event = field(default_factory=trio.Event)  # replaced after each set

    async def handle(self, stream: trio.SocketStream) -> None:
        number = self.connections
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while (got := await read_request(conn, stream)) is not None:
                exchange = Exchange(conn, stream, *got, number, len(self.exchanges))
                self.exchanges.append(exchange)
                self._note_progress()
                await self.script(exchange)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            self.ended += 1
            self._note_progress()

    def _note_progress(self) -> None:
        self.progress.set()
        self.progress = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.progress.wait()


async def read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Request, bytes] | None:
    request = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, body
        else:
            return None


@asynccontextmanager
async def running(
    script: Script = answer_ok, pool: UpstreamPool | None = None
) -> AsyncIterator[tuple[Backend, UpstreamPool]]:
    backend = Backend(script)
    pool = pool or UpstreamPool()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, backend.handle, 0, host="127.0.0.1")
            )
            backend.port = listeners[0].socket.getsockname()[1]
            try:
                yield backend, pool
            finally:
                await pool.aclose()
                nursery.cancel_scope.cancel()


async def fetch(
    pool: UpstreamPool, port: int, method: bytes = b"GET", body: bytes = b""
) -> tuple[UpstreamResponse, bytes]:
    async with pool.request(port, method, b"/x", [], body) as response:
        chunks = [chunk async for chunk in response.iter_body()]
    return response, b"".join(chunks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_get_with_content_length_response() -> None:
    async def script(exchange: Exchange) -> None:
        await exchange.respond(b"hello", headers=[(b"X-Thing", b"1")])

    async with running(script) as (backend, pool):
        response, body = await fetch(pool, backend.port)
    assert (response.status_code, response.reason, response.http_version) == (200, b"", b"1.1")
    assert (b"x-thing", b"1") in response.headers
    assert body == b"hello"
    request = backend.exchanges[0].request
    assert (request.method, request.target) == (b"GET", b"/x")
    assert (b"host", f"127.0.0.1:{backend.port}".encode()) in request.headers
    assert (b"content-length", b"0") in request.headers


async def test_post_overrides_framing_headers_and_sends_body() -> None:
    async def echo(exchange: Exchange) -> None:
        await exchange.respond(exchange.body)

    payload = b'{"model": "m"}' * 10_000  # large enough to go out in two writes
    caller_headers = [
        (b"Host", b"evil"),
        (b"Content-Length", b"3"),
        (b"Transfer-Encoding", b"chunked"),
        (b"x-keep", b"yes"),
    ]
    async with running(echo) as (backend, pool):
        request = pool.request(backend.port, b"POST", b"/v1", caller_headers, payload)
        async with request as response:
            body = b"".join([chunk async for chunk in response.iter_body()])
    assert body == payload
    sent = backend.exchanges[0].request.headers
    assert [value for name, value in sent if name == b"host"] == [
        f"127.0.0.1:{backend.port}".encode()
    ]
    assert [value for name, value in sent if name == b"content-length"] == [
        str(len(payload)).encode()
    ]
    assert not any(name in (b"transfer-encoding", b"connection") for name, _ in sent)
    assert (b"x-keep", b"yes") in sent


async def test_chunked_response_is_streamed_chunk_by_chunk() -> None:
    first_seen = trio.Event()

    async def script(exchange: Exchange) -> None:
        await exchange.send(h11.Response(status_code=200, headers=[]), h11.Data(data=b"one"))
        await first_seen.wait()  # deadlocks (and times out) if the client buffers
        await exchange.send(h11.Data(data=b"two"), h11.EndOfMessage())

    async with running(script) as (backend, pool):
        async with pool.request(backend.port, b"GET", b"/", [], b"") as response:
            assert (b"transfer-encoding", b"chunked") in response.headers
            chunks = []
            async for chunk in response.iter_body():
                chunks.append(chunk)
                first_seen.set()
        assert chunks == [b"one", b"two"]
        assert pool.idle_count(backend.port) == 1


async def test_sequential_requests_reuse_one_connection() -> None:
    async with running() as (backend, pool):
        for _ in range(3):
            _, body = await fetch(pool, backend.port)
            assert body == b"ok"
            assert pool.idle_count(backend.port) == 1
    assert backend.connections == 1


async def test_informational_responses_are_skipped() -> None:
    async def script(exchange: Exchange) -> None:
        await exchange.send(h11.InformationalResponse(status_code=100, headers=[]))
        await exchange.respond(b"final", status=201)

    async with running(script) as (backend, pool):
        response, body = await fetch(pool, backend.port, b"POST", b"x")
    assert (response.status_code, body) == (201, b"final")


async def test_idle_connection_closed_by_backend_is_replaced() -> None:
    async def answer_then_hang_up(exchange: Exchange) -> None:
        await exchange.respond(b"ok")
        await exchange.stream.aclose()

    async with running(answer_then_hang_up) as (backend, pool):
        await fetch(pool, backend.port)
        assert pool.idle_count(backend.port) == 1
        await backend.wait_until(lambda: backend.ended == 1)
        _, body = await fetch(pool, backend.port)
    assert body == b"ok"
    assert backend.connections == 2


async def test_reused_connection_dropped_before_response_is_retried_once() -> None:
    async def answer_first_request_per_connection(exchange: Exchange) -> None:
        # Reading the request and then hanging up is the keep-alive race at its worst: the
        # pool's idle check cannot see it coming, only the retry saves the request.
        if exchange.request_number == 0 or exchange.connection_number > 0:
            await exchange.respond(b"ok")

    async with running(answer_first_request_per_connection) as (backend, pool):
        await fetch(pool, backend.port)
        _, body = await fetch(pool, backend.port, b"POST", b"payload")
    assert body == b"ok"
    assert backend.connections == 2
    assert [e.body for e in backend.exchanges] == [b"", b"payload", b"payload"]


async def test_retry_happens_only_once() -> None:
    async def answer_only_the_first_request(exchange: Exchange) -> None:
        if exchange.request_number == 0:
            await exchange.respond(b"ok")

    async with running(answer_only_the_first_request) as (backend, pool):
        await fetch(pool, backend.port)
        with pytest.raises(UpstreamError, match="closed the connection without responding"):
            await fetch(pool, backend.port)
        assert pool.idle_count(backend.port) == 0
    assert backend.connections == 2


async def test_fresh_connection_dropped_before_response_is_not_retried() -> None:
    async def hang_up(exchange: Exchange) -> None:
        pass

    async with running(hang_up) as (backend, pool):
        with pytest.raises(UpstreamError, match="without responding"):
            await fetch(pool, backend.port)
    assert backend.connections == 1


async def test_connection_refused() -> None:
    port = free_port()
    pool = UpstreamPool()
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool, port)
    message = str(caught.value)
    assert message.startswith(f"cannot connect to backend on 127.0.0.1:{port}: ")
    assert "refused" in message.lower()


async def test_backend_closing_mid_body_fails_iter_body() -> None:
    async def truncate(exchange: Exchange) -> None:
        head = h11.Response(status_code=200, headers=[(b"content-length", b"100")])
        await exchange.send(head, h11.Data(data=b"partial"))
        await exchange.stream.aclose()

    async with running(truncate) as (backend, pool):
        received = []
        with pytest.raises(UpstreamError, match="broke the HTTP protocol"):
            async with pool.request(backend.port, b"GET", b"/", [], b"") as response:
                async for chunk in response.iter_body():
                    received.append(chunk)
        assert received == [b"partial"]
        assert pool.idle_count(backend.port) == 0


async def test_garbage_response_raises() -> None:
    async def garbage(exchange: Exchange) -> None:
        await exchange.stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")

    async with running(garbage) as (backend, pool):
        with pytest.raises(UpstreamError, match="broke the HTTP protocol"):
            await fetch(pool, backend.port)


async def test_cancellation_mid_body_closes_the_connection() -> None:
    client_gone = trio.Event()

    async def stream_until_client_leaves(exchange: Exchange) -> None:
        await exchange.send(h11.Response(status_code=200, headers=[]), h11.Data(data=b"one"))
        assert await exchange.stream.receive_some(1024) == b""
        client_gone.set()

    async with running(stream_until_client_leaves) as (backend, pool):
        with trio.CancelScope() as scope:
            async with pool.request(backend.port, b"GET", b"/", [], b"") as response:
                async for _ in response.iter_body():
                    scope.cancel()
        assert scope.cancelled_caught
        assert pool.idle_count(backend.port) == 0
        await client_gone.wait()  # the socket was really closed, not leaked


async def test_cancellation_before_the_head_closes_the_connection() -> None:
    client_gone = trio.Event()

    async def never_answer(exchange: Exchange) -> None:
        assert await exchange.stream.receive_some(1024) == b""
        client_gone.set()

    async with running(never_answer) as (backend, pool):
        with trio.move_on_after(0.05):
            await fetch(pool, backend.port)
        assert pool.idle_count(backend.port) == 0
        await client_gone.wait()


async def test_unread_body_is_not_pooled() -> None:
    async with running() as (backend, pool):
        async with pool.request(backend.port, b"GET", b"/", [], b"") as response:
            assert response.status_code == 200
        assert pool.idle_count(backend.port) == 0


async def test_connection_close_from_backend_is_not_pooled() -> None:
    async def answer_and_close(exchange: Exchange) -> None:
        await exchange.respond(b"bye", headers=[(b"connection", b"close")])

    async with running(answer_and_close) as (backend, pool):
        for _ in range(2):
            _, body = await fetch(pool, backend.port)
            assert body == b"bye"
            assert pool.idle_count(backend.port) == 0
    assert backend.connections == 2


async def test_idle_connections_are_capped_per_port() -> None:
    release = trio.Event()

    async def answer_together(exchange: Exchange) -> None:
        await release.wait()
        await exchange.respond(b"ok")

    async with running(answer_together, UpstreamPool(max_idle_per_port=2)) as (backend, pool):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(fetch, pool, backend.port)
            await backend.wait_until(lambda: len(backend.exchanges) == 3)
            release.set()
        assert pool.idle_count(backend.port) == 2


async def test_aclose_closes_idle_connections() -> None:
    async with running() as (backend, pool):
        await fetch(pool, backend.port)
        assert pool.idle_count(backend.port) == 1
        await pool.aclose()
        assert pool.idle_count(backend.port) == 0
        await backend.wait_until(lambda: backend.ended == 1)


async def test_sockets_have_nodelay() -> None:
    # Small SSE events must not wait on Nagle; trio's SocketStream promises this, so pin it.
    async with running() as (backend, pool):
        await fetch(pool, backend.port)
        (conn,) = pool._idle[backend.port]
        assert conn.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# ---- framing the pool reads itself (the parser is also checked against h11 byte by byte in
# test_upstream_parser.py; these go through real sockets) -----------------------------------


def raw(response: bytes, *, then_close: bool = False, bytewise: bool = False) -> Script:
    async def script(exchange: Exchange) -> None:
        if bytewise:
            for i in range(len(response)):
                await exchange.stream.send_all(response[i : i + 1])
                await trio.sleep(0.001)  # so the client really reads them apart
        else:
            await exchange.stream.send_all(response)
        if then_close:
            await exchange.stream.aclose()
        else:
            await trio.sleep_forever()  # answered by hand: keep the connection as it is

    return script


async def test_head_response_has_no_body_and_is_pooled() -> None:
    async with running(raw(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")) as (backend, pool):
        response, body = await fetch(pool, backend.port, b"HEAD")
        assert (response.status_code, body) == (200, b"")
        assert (b"content-length", b"5") in response.headers
        assert pool.idle_count(backend.port) == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(status: int) -> None:
    head = b"HTTP/1.1 %d Nothing\r\n\r\n" % status
    async with running(raw(head)) as (backend, pool):
        response, body = await fetch(pool, backend.port)
        assert (response.status_code, response.reason, body) == (status, b"Nothing", b"")
        assert pool.idle_count(backend.port) == 1


async def test_close_delimited_body_is_read_to_the_end_and_not_pooled() -> None:
    response_bytes = b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nall of this"
    async with running(raw(response_bytes, then_close=True)) as (backend, pool):
        _, body = await fetch(pool, backend.port)
        assert body == b"all of this"
        assert pool.idle_count(backend.port) == 0


async def test_chunked_body_with_trailers_split_byte_by_byte() -> None:
    response_bytes = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    async with running(raw(response_bytes, bytewise=True)) as (backend, pool):
        response, body = await fetch(pool, backend.port)
        assert body == b"hello world"
        assert (b"transfer-encoding", b"chunked") in response.headers
        assert pool.idle_count(backend.port) == 1


async def test_http_1_0_response_is_not_pooled() -> None:
    response_bytes = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"
    async with running(raw(response_bytes)) as (backend, pool):
        response, body = await fetch(pool, backend.port)
        assert (response.http_version, body) == (b"1.0", b"ok")
        assert pool.idle_count(backend.port) == 0


async def test_bytes_after_the_response_are_not_pooled() -> None:
    response_bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"
    async with running(raw(response_bytes)) as (backend, pool):
        _, body = await fetch(pool, backend.port)
        assert body == b"ok"
        assert pool.idle_count(backend.port) == 0


async def test_a_caller_asking_to_close_is_not_pooled() -> None:
    async with running() as (backend, pool):
        request = pool.request(backend.port, b"GET", b"/", [(b"Connection", b"close")], b"")
        async with request as response:
            assert [chunk async for chunk in response.iter_body()] == [b"ok"]
        assert pool.idle_count(backend.port) == 0
    assert (b"connection", b"close") in backend.exchanges[0].request.headers


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/x HTTP/1.1\r\nx: y", []),
        (b"G T", b"/", []),
        (b"GET", b"/", [(b"x", b"a\r\nx-injected: 1")]),
        (b"GET", b"/", [(b"bad name", b"v")]),
        (b"GET", b"/", [(b"x", b"\x00")]),
    ],
)
def test_requests_http_cannot_carry_are_refused_before_sending(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ValueError, match="cannot send"):
        UpstreamPool().request(1, method, target, headers, b"")


async def test_malformed_head_split_across_reads_raises() -> None:
    async with running(raw(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", bytewise=True)) as (
        backend,
        pool,
    ):
        with pytest.raises(UpstreamError, match="broke the HTTP protocol"):
            await fetch(pool, backend.port)
        assert pool.idle_count(backend.port) == 0
