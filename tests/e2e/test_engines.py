"""A model declared with an `engine` block instead of hooks: llmux starts its process on wake
(ready once its check endpoint answers), stops it on sleep, keeps its output for
/llmux/models/NAME/logs, and reports a process that exits before it is ready as a failed
wake. The engine here is the stand-in backend, run as a command, as a user would run
`llama-server --port ${PORT}`."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio

from llmux.app import App
from llmux.config import parse_config
from tests.waiting import wait_until

STANDIN = f"{sys.executable} -m llmux.standin serve --port ${{PORT}} --name ${{MODEL}}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, models: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    config = parse_config(
        {"models": models, "port": 0, "state_dir": str(tmp_path / "state")},
        base_dir=str(tmp_path),
    )
    app = App(config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(app.serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
        app.shutdown_requested.set()


async def test_an_engine_process_is_started_on_wake_stopped_on_sleep_and_its_output_kept(
    tmp_path: Path,
) -> None:
    port = _free_port()
    engine = {"type": "command", "command": STANDIN, "env": {"STANDIN_GREETING": "hi"}}
    async with serving(tmp_path, {"m": {"port": port, "engine": engine}}) as client:
        assert not _listening(port)
        reply = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user"}]}
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-standin-backend"] == "m"
        logs = await client.get("/llmux/models/m/logs")
        assert logs.status_code == 200
        assert logs.headers["content-type"].startswith("text/plain")
        assert f"--- llmux: starting m: {sys.executable} -m llmux.standin serve --port {port}" in (
            logs.text
        )
        slept = await client.post("/llmux/models/m/sleep?wait=10")
        assert slept.status_code == 200, slept.text
        await wait_until(lambda: not _listening(port), what="the engine process stopped")
        # Woken again (a fresh process), then llmux stops: its sleep stops the engine too.
        again = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user"}]}
        )
        assert again.status_code == 200
        assert _listening(port)
    assert not _listening(port), "the engine outlived llmux"


async def test_an_engine_that_exits_before_it_is_ready_is_a_failed_wake_naming_why(
    tmp_path: Path,
) -> None:
    engine = {"type": "command", "command": "echo 'CUDA out of memory' >&2; exit 3"}
    async with serving(tmp_path, {"m": {"port": _free_port(), "engine": engine}}) as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user"}]}
        )
        assert reply.status_code == 500
        assert reply.json()["error"]["message"] == (
            "Hook failed for m: exit status 1: m exited with status 3 before it was ready: "
            "CUDA out of memory"
        )
        logs = await client.get("/llmux/models/m/logs")
        assert "CUDA out of memory" in logs.text


async def test_a_model_without_an_engine_has_no_logs(tmp_path: Path) -> None:
    models = {"m": {"port": _free_port(), "wake": "true", "sleep": "true"}}
    async with serving(tmp_path, models) as client:
        reply = await client.get("/llmux/models/m/logs")
        assert reply.status_code == 404
        assert "only a model with an `engine`" in reply.json()["error"]["message"]
