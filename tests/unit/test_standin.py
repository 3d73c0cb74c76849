"""The stand-in backend, served in-process and driven through UpstreamPool; plus its CLI."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from llmux.standin import serve
from llmux.upstream import UpstreamError, UpstreamPool

TIMEOUT = 5.0


class Reply(msgspec.Struct):
    status: int
    headers: dict[bytes, bytes]
    chunks: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def sse_data(self) -> list[bytes]:
        events = self.body.split(b"\n\n")
        assert events[-1] == b""
        assert all(event.startswith(b"data: ") for event in events[:-1])
        return [event.removeprefix(b"data: ") for event in events[:-1]]


class Client:
    def __init__(self, pool: UpstreamPool, port: int) -> None:
        self.pool = pool
        self.port = port

    async def call(
        self,
        method: bytes,
        path: bytes,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Reply:
        async with self.pool.request(self.port, method, path, headers or [], body) as response:
            chunks = [chunk async for chunk in response.iter_body()]
        return Reply(response.status_code, dict(response.headers), chunks)

    async def post(self, path: bytes, payload: dict[str, Any]) -> Reply:
        return await self.call(b"POST", path, msgspec.json.encode(payload))


@asynccontextmanager
async def standin(
    name: str = "standin", chunk_delay: float = 0.0, slots: int | None = None
) -> AsyncIterator[Client]:
    pool = UpstreamPool()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve, 0, name=name, chunk_delay=chunk_delay, slots=slots)
            )
            try:
                yield Client(pool, port)
            finally:
                await pool.aclose()
                nursery.cancel_scope.cancel()


CHAT = b"/v1/chat/completions"
TEXT = b"/v1/completions"


async def test_chat_completion() -> None:
    async with standin(name="small") as client:
        first = await client.post(CHAT, {"model": "m1", "messages": [{"role": "user"}]})
        second = await client.post(CHAT, {"model": "m2", "messages": []})
    assert first.status == 200
    assert first.headers[b"content-type"] == b"application/json"
    assert first.headers[b"x-standin-backend"] == b"small"
    body = first.json()
    assert body["id"] == "cmpl-0"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "m1"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": " ".join(f"tok{i}" for i in range(8))},
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 8, "total_tokens": 9}
    assert body["backend"] == "small"
    assert body["request_number"] == 0
    assert (second.json()["request_number"], second.json()["model"]) == (1, "m2")


async def test_max_tokens() -> None:
    async with standin() as client:
        reply = await client.post(CHAT, {"model": "m", "max_tokens": 3})
        huge = await client.post(CHAT, {"model": "m", "max_tokens": 10**9})
    assert reply.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert reply.json()["usage"]["completion_tokens"] == 3
    assert huge.json()["usage"]["completion_tokens"] == 100_000


async def test_text_completion() -> None:
    async with standin() as client:
        reply = await client.post(TEXT, {"model": "m", "prompt": "hi", "max_tokens": 2})
    body = reply.json()
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "tok0 tok1", "finish_reason": "stop"}]


async def test_streaming_chat() -> None:
    async with standin() as client:
        reply = await client.post(CHAT, {"model": "m", "stream": True, "max_tokens": 4})
    assert reply.status == 200
    assert reply.headers[b"content-type"] == b"text/event-stream"
    assert reply.headers[b"transfer-encoding"] == b"chunked"
    assert b"content-length" not in reply.headers
    data = reply.sse_data()
    assert data[-1] == b"[DONE]"
    chunks = [msgspec.json.decode(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == "tok0 tok1 tok2 tok3 "
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


async def test_streaming_text_completion() -> None:
    async with standin() as client:
        reply = await client.post(TEXT, {"model": "m", "stream": True, "max_tokens": 2})
    data = reply.sse_data()
    assert data[-1] == b"[DONE]"
    texts = [msgspec.json.decode(d)["choices"][0]["text"] for d in data[:-1]]
    assert texts == ["tok0 ", "tok1 ", ""]


async def test_each_streamed_event_arrives_on_its_own() -> None:
    async with standin() as client:
        payload = {"model": "m", "stream": True, "max_tokens": 3, "chunk_delay": 0.05}
        reply = await client.post(CHAT, payload)
    # 50 ms apart, each event is its own read; the first cannot wait for the second.
    assert len(reply.chunks) == len(reply.sse_data())
    assert reply.chunks[-1] == b"data: [DONE]\n\n"


async def test_client_leaving_mid_stream_does_not_hurt_the_server() -> None:
    async with standin(chunk_delay=0.01) as client:
        payload = {"model": "m", "stream": True, "max_tokens": 1000}
        with trio.move_on_after(0.05):
            await client.post(CHAT, payload)
        await trio.sleep(0.05)  # long enough for the server's next send to hit the closed socket
        reply = await client.call(b"GET", b"/health")
    assert reply.status == 200


async def test_slots_serve_that_many_at_once_and_queue_the_rest_in_order() -> None:
    # Each stream takes two 0.15 s gaps; with 2 slots the third and fourth requests get
    # their heads only when the first two are done, in the order they came.
    heads: dict[int, float] = {}
    async with standin(slots=2) as client:
        start = trio.current_time()

        async def one(i: int) -> None:
            payload = {"model": "m", "stream": True, "max_tokens": 2, "chunk_delay": 0.15}
            port = client.port
            async with client.pool.request(
                port, b"POST", CHAT, [], msgspec.json.encode(payload)
            ) as r:
                heads[i] = trio.current_time() - start
                async for _ in r.iter_body():
                    pass

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)
                await trio.sleep(0.01)
    assert heads[0] < 0.1 and heads[1] < 0.1
    assert 0.25 < heads[2] < heads[3]


async def test_a_client_leaving_frees_its_slot() -> None:
    async with standin(slots=1) as client:
        payload = {"model": "m", "stream": True, "max_tokens": 1000, "chunk_delay": 0.05}
        with trio.move_on_after(0.1):
            await client.post(CHAT, payload)
        with trio.fail_after(1.0):
            reply = await client.post(CHAT, {"model": "m"})
    assert reply.status == 200


async def test_models_health_and_stats() -> None:
    async with standin(name="big") as client:
        models = await client.call(b"GET", b"/v1/models")
        health = await client.call(b"GET", b"/health")
        await client.post(CHAT, {"model": "m"})
        stats = await client.call(b"GET", b"/stats?verbose=1")
    assert models.json() == {
        "object": "list",
        "data": [{"id": "big", "object": "model", "created": 0, "owned_by": "standin"}],
    }
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert stats.json() == {"requests": 1}


async def test_unknown_path_is_404() -> None:
    async with standin() as client:
        reply = await client.call(b"GET", b"/nope")
        wrong_method = await client.call(b"GET", CHAT)
    assert reply.status == 404
    assert "/nope" in reply.json()["error"]["message"]
    assert wrong_method.status == 404


async def test_invalid_json_is_400() -> None:
    async with standin() as client:
        reply = await client.call(b"POST", CHAT, b"{not json")
        not_an_object = await client.call(b"POST", CHAT, b"[1, 2]")
        after = await client.post(CHAT, {"model": "m"})
    assert reply.status == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert not_an_object.status == 400
    assert after.json()["request_number"] == 0  # rejected requests are not counted


async def test_expect_100_continue() -> None:
    async with standin() as client:
        reply = await client.call(b"POST", CHAT, b'{"model": "m"}', [(b"expect", b"100-continue")])
    assert reply.status == 200


async def test_malformed_http_gets_400_and_close() -> None:
    async with standin() as client:
        stream = await trio.open_tcp_stream("127.0.0.1", client.port)
        async with stream:
            await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in received.lower()


# ---------------------------------------------------------------------------- subprocess CLI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def standin_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmux.standin", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


async def test_start_and_stop(tmp_path: Path) -> None:
    port = free_port()
    pidfile = tmp_path / "standin.pid"
    log = tmp_path / "standin.log"
    started = await trio.to_thread.run_sync(
        partial(
            standin_cli,
            *("start", "--port", str(port), "--pidfile", str(pidfile)),
            *("--name", "cli", "--log", str(log)),
        )
    )
    try:
        assert started.returncode == 0, started.stderr
        assert int(pidfile.read_text()) > 0

        again = await trio.to_thread.run_sync(
            partial(standin_cli, "start", "--port", str(port), "--pidfile", str(tmp_path / "2"))
        )
        assert again.returncode == 1
        assert "already in use" in again.stderr

        same = await trio.to_thread.run_sync(
            partial(standin_cli, "start", "--port", str(port), "--pidfile", str(pidfile))
        )
        assert same.returncode == 0, "starting the same server twice is not an error"
        assert int(pidfile.read_text()) > 0

        client = Client(UpstreamPool(), port)
        reply = await client.post(CHAT, {"model": "m"})
        assert reply.json()["backend"] == "cli"
        await client.pool.aclose()
    finally:
        stopped = await trio.to_thread.run_sync(
            partial(standin_cli, "stop", "--pidfile", str(pidfile))
        )
    assert stopped.returncode == 0, stopped.stderr
    assert not pidfile.exists()
    assert "listening on 127.0.0.1:" in log.read_text()
    with pytest.raises(UpstreamError, match="refused"):
        await Client(UpstreamPool(), port).call(b"GET", b"/health")


async def test_stop_without_pidfile_succeeds(tmp_path: Path) -> None:
    stopped = await trio.to_thread.run_sync(
        partial(standin_cli, "stop", "--pidfile", str(tmp_path / "missing.pid"))
    )
    assert stopped.returncode == 0, stopped.stderr
