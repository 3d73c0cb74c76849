"""The front end under arbitrary bytes: it answers with a well-formed HTTP error or closes,
never crashes, never hangs, and never leaks a queued waiter or an in-flight slot.

Each example runs in its own `trio.run` on a MockClock that jumps ahead whenever everything
waits, so the header and body timeouts cost no real time; the connection is an in-memory
stream pair, and the one model's wake hook fails after a virtual second (a stand-in for the
hook runner: a real process cannot run on a virtual clock), so a request that gets as far as
a switch is answered too.
"""

from __future__ import annotations

import contextlib
import re

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from llmux.app import App
from llmux.config import Config, ModelConfig
from llmux.core.messages import Hook
from llmux.hooks import HookOutcome

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")
ALLOWED = {200, 400, 401, 404, 408, 413, 431, 500, 501, 502, 503, 504, 505}

METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"G\x00T", b""])
TARGETS = st.sampled_from(
    [b"/v1/chat/completions", b"/v1/models", b"/metrics", b"/health", b"*", b"/\xff", b""]
)
HEADERS = st.lists(
    st.sampled_from(
        [
            b"host: x",
            b"content-length: 5",
            b"content-length: -1",
            b"content-length: 99999999999",
            b"transfer-encoding: chunked",
            b"transfer-encoding: gzip",
            b"expect: 100-continue",
            b"connection: close",
            b"authorization: Bearer k",
            b"x: \x01",
            b": empty-name",
        ]
    )
    | st.binary(max_size=30),
    max_size=6,
)
BODIES = st.sampled_from(
    [b"", b'{"model": "m"}', b'{"model": 1}', b'{"model": "zz"}', b"{", b"5\r\nhello\r\n0\r\n\r\n"]
) | st.binary(max_size=64)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    head = (
        draw(METHODS)
        + b" "
        + draw(TARGETS)
        + b" "
        + draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"FOO"]))
    )
    lines = [head, *draw(HEADERS)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(BODIES)


def _config() -> Config:
    return Config(
        models={"m": ModelConfig(port=9, wake="exit 3", sleep="true")},
        port=0,
    )


async def _converse(app: App, data: bytes) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.http.handle_connection, server)
        # No EOF after the request: like nginx, llmux takes a client's EOF for a client that
        # left, and would withdraw its request. The server closes idle connections itself.
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_all(data)
        with trio.fail_after(3600):  # virtual time: a hang shows up as a failure, quickly
            while True:
                try:
                    chunk = await client.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return bytes(received)


async def _fake_hook(model: str, hook: Hook) -> HookOutcome:
    await trio.sleep(1)
    if hook is Hook.WAKE:  # as the config says: `exit 3`
        return HookOutcome(False, "exit status 3", 1.0, "")
    return HookOutcome(True, "", 1.0, "")


def _run(data: bytes) -> tuple[bytes, App]:
    app = App(_config(), hooks=_fake_hook)

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.scheduler.run)
            for actor in app.model_actors.values():
                nursery.start_soon(actor.run)
            answer = await _converse(app, data)
            # Let the actors settle (a failed wake's cleanup), then look for leaks.
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
        return answer

    answer = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return answer, app


def _check(answer: bytes, app: App) -> None:
    statuses = [int(code) for code in STATUS_LINE.findall(answer)]
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), answer[:80]
        assert statuses, answer[:80]
    # A 100 Continue (to `expect: 100-continue` with a body announced) is an interim
    # response: allowed, as long as a final one follows it.
    assert set(statuses) <= ALLOWED | {100}, statuses
    assert not statuses or statuses[-1] != 100, statuses
    core = app.model_actors["m"].core
    assert not core.queue, "a waiter leaked"
    assert not core.in_flight, "an in-flight slot leaked"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(*_run(data))


@settings(max_examples=250, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=3).map(b"".join))
def test_plausible_but_broken_requests(data: bytes) -> None:
    _check(*_run(data))


def test_a_request_for_the_model_is_answered_with_its_wake_failure() -> None:
    body = b'{"model": "m"}'
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 14\r\n\r\n"
    answer, app = _run(request + body)
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"Hook failed for m: exit status 3" in answer
    _check(answer, app)
