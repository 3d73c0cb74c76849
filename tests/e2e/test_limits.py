"""Limits, keys and hostile clients: clear errors, and nobody else is disturbed."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import openai
import pytest
import trio

from llmux.config import Limits
from tests.e2e.conftest import Rig, running
from tests.waiting import wait_until


def _port(rig: Rig) -> int:
    return int(rig.url.rsplit(":", 1)[1])


# ---- API keys ---------------------------------------------------------------------------------


async def test_api_keys_guard_every_route_but_health(tmp_path: Path) -> None:
    async with running(tmp_path, api_keys=("k-one", "k-two")) as rig:
        async with httpx.AsyncClient(base_url=rig.url) as anonymous:
            for method, path in [
                ("POST", "/v1/chat/completions"),
                ("GET", "/v1/models"),
                ("GET", "/metrics"),
            ]:
                reply = await anonymous.request(method, path, json={"model": "a"})
                assert reply.status_code == 401
                assert reply.json()["error"]["type"] == "authentication_error"
                assert reply.json()["error"]["message"].startswith("Missing API key")
            assert (await anonymous.get("/health")).status_code == 200
            wrong = await anonymous.get("/v1/models", headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert wrong.json()["error"]["message"].startswith("Invalid API key")
            second = await anonymous.get("/v1/models", headers={"x-api-key": "k-two"})
            assert second.status_code == 200
        assert (await rig.chat("a")).status_code == 200  # rig's client sends k-one
        assert rig.hook_runs() == ["a:wake"], "refused requests never woke anything"


def _sdk_with_key(url: str, key: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    try:
        return client.models.list().data[0].id
    except openai.AuthenticationError as exc:
        return f"refused: {exc.status_code}"


async def test_the_openai_client_authenticates_with_its_api_key(tmp_path: Path) -> None:
    async with running(tmp_path, api_keys=("secret",)) as rig:
        assert await trio.to_thread.run_sync(_sdk_with_key, rig.url, "secret") == "a"
        assert await trio.to_thread.run_sync(_sdk_with_key, rig.url, "guess") == "refused: 401"


# ---- queue and size limits --------------------------------------------------------------------


async def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    async with running(tmp_path, max_queue=2) as rig:
        rig.hold_wake("a")  # all five arrive while a wakes
        replies: list[httpx.Response] = []

        async def ask() -> None:
            replies.append(await rig.chat("a"))

        async def queue_full() -> bool:
            return await rig.metric("llmux_request_queue_depth", model="a") == 2

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ask)
            await wait_until(lambda: len(replies) == 3, what="three requests refused at once")
            await wait_until(queue_full, what="two requests queued for a")
            rig.hold_wake("a", holding=False)
        statuses = sorted(reply.status_code for reply in replies)
        assert statuses == [200, 200, 503, 503, 503]
        refused = [reply for reply in replies if reply.status_code == 503]
        assert all(reply.headers["retry-after"] == "5" for reply in refused)
        # A retry later will find room: the OpenAI SDKs are told they may retry.
        assert all(reply.headers["x-should-retry"] == "true" for reply in refused)
        assert "max_queue 2" in refused[0].json()["error"]["message"]
        # Once active, the model admits any number of requests: the bound is on waiting.
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ask)
        assert [reply.status_code for reply in replies[5:]] == [200] * 5


async def test_max_in_flight_forwards_that_many_at_once_and_the_rest_in_order(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, max_in_flight=1) as rig:
        await rig.chat("a")
        heads: dict[str, float] = {}
        ends: dict[str, float] = {}

        async def stream(label: str, chunk_delay: float = 0.05) -> None:
            request = {"model": "a", "stream": True, "max_tokens": 5, "chunk_delay": chunk_delay}
            async with rig.client.stream("POST", "/v1/chat/completions", json=request) as reply:
                heads[label] = trio.current_time()
                assert reply.status_code == 200
                async for _ in reply.aiter_bytes():
                    pass
            ends[label] = trio.current_time()

        async def in_llmux(in_flight: int, queued: int) -> bool:
            return (
                await rig.metric("llmux_model_in_flight", model="a") == in_flight
                and await rig.metric("llmux_request_queue_depth", model="a") == queued
            )

        async with trio.open_nursery() as nursery:
            # Each sent once llmux has the one before, so they wait in this order; the first
            # streams for ~1 s, long enough for the test to see the other two wait behind it.
            nursery.start_soon(stream, "first", 0.2)
            await wait_until(lambda: in_llmux(1, 0), what="the first stream in flight")
            nursery.start_soon(stream, "second")
            await wait_until(lambda: in_llmux(1, 1), what="the second stream queued")
            nursery.start_soon(stream, "third")
            await wait_until(lambda: in_llmux(1, 2), what="the third stream queued")
            # The second and third wait in llmux, counted as queued, not in flight.
            assert await rig.metric("llmux_model_in_flight", model="a") == 1
            assert await rig.metric("llmux_request_queue_depth", model="a") == 2
        assert heads["second"] >= ends["first"] - 0.01
        assert heads["third"] >= ends["second"] - 0.01
        assert await rig.metric("llmux_model_in_flight", model="a") == 0


async def test_a_body_over_the_limit_is_413_and_the_server_carries_on(tmp_path: Path) -> None:
    async with running(tmp_path, limits=Limits(max_body_bytes=1000)) as rig:
        reply = await rig.client.post(
            "/v1/chat/completions", content=b'{"model": "a", "pad": "' + b"x" * 2000 + b'"}'
        )
        assert reply.status_code == 413
        assert "larger than 1000 bytes" in reply.json()["error"]["message"]
        assert (await rig.chat("a")).status_code == 200


def _raw_exchange(port: int, data: bytes, pause: float = 0.0) -> bytes:
    """Send `data`, then read until the server closes (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


async def test_too_many_or_too_large_headers_are_431(tmp_path: Path) -> None:
    limits = Limits(max_headers=20, max_header_bytes=4096)
    async with running(tmp_path, limits=limits) as rig:
        many = b"".join(b"x-h%d: v\r\n" % i for i in range(30))
        request = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n"
        answer = await trio.to_thread.run_sync(_raw_exchange, _port(rig), request)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b"More than 20 request headers" in answer
        huge = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"y" * 8000 + b"\r\n\r\n"
        answer = await trio.to_thread.run_sync(_raw_exchange, _port(rig), huge)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert (await rig.client.get("/v1/models")).status_code == 200


# ---- slow and idle clients --------------------------------------------------------------------


async def test_slow_headers_and_stalled_bodies_get_408_and_are_cut_off(tmp_path: Path) -> None:
    limits = Limits(header_timeout_secs=0.5, body_timeout_secs=0.5)
    async with running(tmp_path, limits=limits) as rig:
        port = _port(rig)
        started = trio.current_time()
        answer = await trio.to_thread.run_sync(_raw_exchange, port, b"POST /v1/chat/compl")
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request headers" in answer
        assert 0.4 < trio.current_time() - started < 3.0
        stalled = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
            b'{"model": "a"'
        )
        answer = await trio.to_thread.run_sync(_raw_exchange, port, stalled)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request body" in answer
        assert rig.hook_runs() == [], "nothing was woken for a request that never arrived"


async def test_hundreds_of_idle_and_half_open_connections_do_not_block_others(
    tmp_path: Path,
) -> None:
    limits = Limits(header_timeout_secs=30, keepalive_idle_secs=30)
    async with running(tmp_path, limits=limits) as rig:
        port = _port(rig)
        idle: list[trio.SocketStream] = []
        try:
            for i in range(300):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                if i % 2:
                    await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nho")
                idle.append(stream)
            started = trio.current_time()
            for _ in range(20):
                assert (await rig.chat("a")).status_code == 200
            assert trio.current_time() - started < 5.0
        finally:
            for stream in idle:
                await stream.aclose()


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(tmp_path: Path) -> None:
    async with running(tmp_path, limits=Limits(keepalive_idle_secs=0.3)) as rig:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(rig))
        await stream.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        received = b""
        with trio.fail_after(5):
            while True:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 ")
        await stream.aclose()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.3.4.5"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    from llmux.app import _is_loopback

    assert _is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    from llmux.app import _is_loopback

    assert not _is_loopback(host)
