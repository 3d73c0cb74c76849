"""Wake failures, timeouts and clients that go away: every request gets an answer or leaves
without a trace."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from tests.e2e.conftest import Rig, running
from tests.waiting import wait_until


async def test_a_failed_wake_answers_500_cleans_up_and_recovers(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.fail_wake("b")
        await rig.chat("a")
        reply = await rig.chat("b")
        assert reply.status_code == 500
        error = reply.json()["error"]
        assert error["type"] == "llmux_error"
        assert error["message"].startswith("Hook failed for b: exit status 1")
        assert "GPU out of memory while loading b" in error["message"]
        # The failed model was put to sleep as cleanup.
        await rig.hooks_become(["a:wake", "a:sleep", "b:wake", "b:sleep"])
        assert await rig.metric("llmux_hook_failures_total", model="b", hook="wake") == 1
        assert (
            await rig.metric("llmux_switch_total", **{"from": "a", "to": "b"}, result="failure")
            == 1
        )

        rig.fail_wake("b", failing=False)
        started = trio.current_time()
        assert (await rig.chat("b")).status_code == 200
        # The next switch waited out the failure backoff.
        assert trio.current_time() - started >= 1.5


async def test_a_request_that_waits_too_long_gets_504(tmp_path: Path) -> None:
    async with running(tmp_path, request_timeout_secs=0.3) as rig:
        rig.hold_wake("a")  # longer than the request may wait, however loaded the machine
        reply = await rig.chat("a")
        assert reply.status_code == 504
        assert "a" in reply.json()["error"]["message"]
        # The wake still completes; the next request is served at once.
        rig.hold_wake("a", holding=False)
        await wait_until(lambda: rig.state("a") == "Active", what="a Active")
        assert (await rig.chat("a")).status_code == 200
        assert rig.hook_runs() == ["a:wake"]


async def _queued(rig: Rig, model: str, depth: int) -> None:
    async def holds() -> bool:
        return await rig.metric("llmux_request_queue_depth", model=model) == depth

    await wait_until(holds, what=f"{depth} request(s) queued for {model}")


async def _left(rig: Rig, model: str) -> None:
    """Wait until llmux has seen the client go: the request is counted as 499 and out of the
    queue."""

    async def gone() -> bool:
        return (
            await rig.metric("llmux_requests_total", model=model, status="499") == 1
            and await rig.metric("llmux_request_queue_depth", model=model) == 0
        )

    await wait_until(gone, what=f"the request for {model} counted 499 and out of the queue")


async def _send_and_hang_up(rig: Rig, model: str) -> None:
    """Send a request, and hang up once llmux has queued it."""
    port = int(rig.url.rsplit(":", 1)[1])
    body = f'{{"model": "{model}"}}'.encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await _queued(rig, model, 1)


async def test_a_client_that_leaves_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.hold_wake("a")  # the request waits until it has left
        await _send_and_hang_up(rig, "a")
        await _left(rig, "a")
        # The wake it started still completes, and the request that left is not served then.
        rig.hold_wake("a", holding=False)
        await rig.hook_ended("a", "wake")
        await wait_until(lambda: rig.state("a") == "Active", what="a Active")
        assert await rig.metric("llmux_model_in_flight", model="a") == 0
        assert await rig.metric("llmux_requests_total", model="a", status="499") == 1


async def test_a_client_that_pipelined_more_and_leaves_while_queued_leaves_the_queue(
    tmp_path: Path,
) -> None:
    # The bytes of the next request are taken in while the first waits; the hang-up after
    # them must still be seen.
    async with running(tmp_path) as rig:
        rig.hold_wake("a")  # the request waits until it has left
        port = int(rig.url.rsplit(":", 1)[1])
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 14\r\n\r\n"
            b'{"model": "a"}'
        )
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request + request[:30])
            await _queued(rig, "a", 1)
        await _left(rig, "a")
        rig.hold_wake("a", holding=False)


async def test_a_client_that_abandons_a_stream_does_not_hold_its_model_awake(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as rig:
        request = {"model": "a", "stream": True, "max_tokens": 1000, "chunk_delay": 0.05}
        async with rig.client.stream("POST", "/v1/chat/completions", json=request) as reply:
            async for _ in reply.aiter_bytes():
                assert await rig.metric("llmux_model_in_flight", model="a") == 1
                break
        # The client closed its connection mid-stream (httpx closes it when we stop reading).

        async def a_idle() -> bool:
            return await rig.metric("llmux_model_in_flight", model="a") == 0

        await wait_until(a_idle, what="nothing in flight on a")
        with trio.fail_after(3):
            assert (await rig.chat("b")).status_code == 200
        assert rig.hook_runs() == ["a:wake", "a:sleep", "b:wake"]


async def test_queued_requests_are_answered_503_on_shutdown(tmp_path: Path) -> None:
    answers: list[tuple[int, float]] = []
    async with running(tmp_path, shutdown_grace_secs=2.0) as rig:
        await rig.chat("a")
        # b's wake lasts until the request waiting for it has its answer.
        rig.hold_wake("b")

        async def ask_b() -> None:
            reply = await rig.chat("b")
            answers.append((reply.status_code, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_b)
            # Shut down while b wakes, its request queued.
            await wait_until(lambda: rig.state("b") == "Waking", what="b Waking")
            await _queued(rig, "b", 1)
            shutdown_at = trio.current_time()
            rig.app.shutdown_requested.set()
            await wait_until(lambda: bool(answers), what="an answer for the request for b")
            rig.hold_wake("b", holding=False)
    [(status, answered_at)] = answers
    assert status == 503
    assert answered_at - shutdown_at < 0.5
    # b's wake was allowed to finish, then b was put to sleep: nothing is left awake.
    assert rig.hook_runs() == ["a:wake", "a:sleep", "b:wake", "b:sleep"]


async def test_a_stream_in_progress_at_shutdown_is_finished_before_its_model_sleeps(
    tmp_path: Path,
) -> None:
    body = bytearray()
    async with running(tmp_path) as rig:
        request = {"model": "a", "stream": True, "max_tokens": 20, "chunk_delay": 0.03}
        async with rig.client.stream("POST", "/v1/chat/completions", json=request) as reply:
            async for chunk in reply.aiter_bytes():
                if not body:
                    rig.app.shutdown_requested.set()
                body += chunk
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"data: ") == 22
    assert rig.hook_runs() == ["a:wake", "a:sleep"]
