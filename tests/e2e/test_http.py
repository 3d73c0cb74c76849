"""The HTTP surface: routing, errors in OpenAI's shape, the official SDK, and HTTP/1.1 details
(keep-alive, pipelining, 100-continue, chunked uploads)."""

from __future__ import annotations

import socket
from pathlib import Path

import openai
import pytest
import trio

from tests.e2e.conftest import Rig, running


async def test_models_are_listed_sorted_in_openai_shape(tmp_path: Path) -> None:
    async with running(tmp_path, ("zeta", "alpha", "mid")) as rig:
        reply = await rig.client.get("/v1/models")
        assert reply.status_code == 200
        assert reply.json() == {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "llmux"}
                for name in ("alpha", "mid", "zeta")
            ],
        }
        assert rig.hook_runs() == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"messages": []}', 404, "No model specified in request"),
        (b"", 404, "No model specified in request"),
        (b'{"model": "gpt-9"}', 404, "Model not found: gpt-9"),
        (b'{"model": ', 400, "Invalid JSON"),
        (b'{"model": 7}', 400, "The `model` field must be a string"),
    ],
)
async def test_bad_requests_get_openai_style_errors(
    tmp_path: Path, body: bytes, status: int, message: str
) -> None:
    async with running(tmp_path) as rig:
        reply = await rig.client.post("/v1/chat/completions", content=body)
        assert reply.status_code == status
        error = reply.json()["error"]
        assert error["message"].startswith(message)
        assert error["type"] == "llmux_error"
        assert (await rig.chat("a")).status_code == 200, "the server still serves"
        assert rig.hook_runs() == ["a:wake"]


async def test_health_and_metrics(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        assert (await rig.client.get("/health")).json() == {"status": "ok"}
        await rig.chat("a")
        reply = await rig.client.get("/metrics")
        assert reply.headers["content-type"].startswith("text/plain")
        assert await rig.metric("llmux_requests_total", model="a", status="200") == 1
        assert await rig.metric("llmux_switch_cost_ema_seconds", **{"from": "idle", "to": "a"})


def _openai_session(url: str) -> list[object]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    seen: list[object] = []
    seen.append(sorted(model.id for model in client.models.list()))
    completion = client.chat.completions.create(
        model="a", messages=[{"role": "user", "content": "hi"}]
    )
    seen.append(completion.choices[0].message.content)
    stream = client.chat.completions.create(
        model="b", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=3
    )
    seen.append("".join(chunk.choices[0].delta.content or "" for chunk in stream))
    try:
        client.chat.completions.create(model="nope", messages=[])
    except openai.NotFoundError as exc:
        seen.append(exc.message)
    return seen


async def test_the_official_openai_client_works_through_llmux(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        seen = await trio.to_thread.run_sync(_openai_session, rig.url)
        assert seen[0] == ["a", "b"]
        assert seen[1] == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
        assert seen[2] == "tok0 tok1 tok2 "
        assert "Model not found: nope" in str(seen[3])
        assert rig.hook_runs() == ["a:wake", "a:sleep", "b:wake"]


# ---- HTTP/1.1 on a raw socket ---------------------------------------------------------------


def _port(rig: Rig) -> int:
    return int(rig.url.rsplit(":", 1)[1])


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response (content-length framed) from `sock`; returns (head, body)."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"connection closed early: {bytes(buffer)!r}"
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = sock.recv(65536)
        assert data
        rest += data
    buffer[:] = rest[length:]
    return head, rest[:length]


def _chat(model: str, extra: bytes = b"") -> bytes:
    body = f'{{"model": "{model}", "messages": []}}'.encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        + extra
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _raw_session(port: int) -> list[bytes]:
    heads = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        buffer = bytearray()
        # Keep-alive and pipelining: three requests written at once, answered in order.
        sock.sendall(_chat("a") * 3)
        for _ in range(3):
            head, body = _read_response(sock, buffer)
            heads.append(head.split(b"\r\n")[0])
            assert b'"backend":"a"' in body
        # 100-continue: the body is sent only once llmux asks for it.
        body = b'{"model": "a"}'
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        head, _ = _read_response(sock, buffer)
        heads.append(head.split(b"\r\n")[0])
        sock.sendall(body)
        head, _ = _read_response(sock, buffer)
        heads.append(head.split(b"\r\n")[0])
        # A chunked upload is forwarded whole.
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b'6\r\n{"mode\r\n8\r\nl": "a"}\r\n0\r\n\r\n'
        )
        head, body = _read_response(sock, buffer)
        heads.append(head.split(b"\r\n")[0])
        assert b'"backend":"a"' in body
        # Garbage is a 400, and the connection is closed.
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        head, body = _read_response(sock, buffer)
        heads.append(head.split(b"\r\n")[0])
        assert b"Malformed HTTP request" in body
        assert sock.recv(1) == b""
    return heads


def _pipeline(port: int, requests: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_chat("a") * requests)
        buffer = bytearray()
        return [_read_response(sock, buffer)[0].split(b"\r\n")[0] for _ in range(requests)]


async def test_pipelining_beyond_the_read_ahead_limit_behind_a_queued_request(
    tmp_path: Path,
) -> None:
    # ~80 KB of requests at once while the first waits for its model: llmux reads 64 KB
    # ahead, stops, and takes the rest as it answers; every request is answered, in order.
    async with running(tmp_path) as rig:
        rig.hook_secs("a", "wake", 0.3)
        heads = await trio.to_thread.run_sync(_pipeline, _port(rig), 700)
        assert heads == [b"HTTP/1.1 200 "] * 700


async def test_keep_alive_pipelining_continue_and_chunked_uploads(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        heads = await trio.to_thread.run_sync(_raw_session, _port(rig))
        assert heads == [
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 100 ",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 400 ",
        ]
        assert (await rig.chat("a")).status_code == 200


def _create_with_default_retries(url: str, model: str) -> openai.APIStatusError:
    # The SDK's defaults: two retries of 5xx with a short backoff, unless x-should-retry says no.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return exc
    raise AssertionError("the request should have failed")


async def test_the_openai_sdk_does_not_retry_a_failed_wake(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.fail_wake("a")
        error = await trio.to_thread.run_sync(_create_with_default_retries, rig.url, "a")
        assert error.status_code == 500
        assert error.response.headers["x-should-retry"] == "false"
        # One create(), one wake: the SDK's two retries would have run the hook three times.
        await rig.hooks_become(["a:wake", "a:sleep"])
        missing = await trio.to_thread.run_sync(_create_with_default_retries, rig.url, "nope")
        assert missing.status_code == 404
        assert missing.response.headers["x-should-retry"] == "false"
        assert await rig.metric("llmux_requests_total", model="nope", status="404") == 0


async def test_no_100_continue_for_a_request_that_announces_no_body(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        stream = await trio.open_tcp_stream("127.0.0.1", int(rig.url.rsplit(":", 1)[1]))
        async with stream:
            await stream.send_all(
                b"GET /v1/models HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                b"connection: close\r\n\r\n"
            )
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:40]
        assert b" 100 " not in answer.split(b"\r\n", 1)[0]
