"""An in-process llmux with real `sh` hooks and gated stand-in backends on loopback.

Each backend refuses completions (503, counted) while its model's `.awake` file is missing,
and the hooks keep a timestamped log; together they let a test check from the outside that
no request reached a sleeping model and that at most one model was ever awake.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from llmux.app import App
from llmux.build import settings_from_config
from llmux.config import Config, Limits, ModelConfig, PolicySettings
from llmux.standin import Standin
from tests.hooklog import (
    HookEvent,
    capacity_violations,
    read_hook_log,
    single_awake_violations,
)
from tests.waiting import wait_until

HOOK = Path(__file__).with_name("hook.sh")


class GatedStandin(Standin):
    def __init__(self, name: str, awake_flag: Path) -> None:
        super().__init__(name)
        self.awake_flag = awake_flag
        self.refused = 0

    async def _dispatch(self, peer: Any, request: h11.Request, body: bytes) -> None:
        if request.target.startswith(b"/v1/") and not self.awake_flag.exists():
            self.refused += 1
            await peer.send_body(503, b'{"error": "model is asleep"}', [])
            return
        await super()._dispatch(peer, request, body)


@dataclass
class Rig:
    dir: Path
    app: App
    backends: dict[str, GatedStandin]
    client: httpx.AsyncClient
    url: str = field(default="")
    initially_awake: frozenset[str] = frozenset()
    # Each backend's port and the scope its server runs in (cancelled: the process "died").
    ports: dict[str, int] = field(default_factory=dict)
    backend_scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    nursery: trio.Nursery | None = None

    # ---- backends that die and come back -------------------------------------------------------

    def kill_backend(self, model: str) -> None:
        """The backend process is gone: its port refuses connections, its connections close.
        Nothing tells llmux (the model's `.awake` flag stays, as after a crash)."""
        self.backend_scopes.pop(model).cancel()

    async def restart_backend(self, model: str) -> None:
        """A backend listens on the model's port again (as its next wake hook would start)."""
        assert self.nursery is not None
        self.backend_scopes[model] = await self.nursery.start(
            _serve_backend, self.backends[model], self.ports[model]
        )

    # ---- the knobs of hook.sh ----------------------------------------------------------------

    def hook_secs(self, model: str, action: str, secs: float) -> None:
        (self.dir / f"{model}.{action}_secs").write_text(f"{secs}\n")

    def fail_wake(self, model: str, failing: bool = True) -> None:
        flag = self.dir / f"{model}.fail_wake"
        if failing:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def hold_wake(self, model: str, holding: bool = True) -> None:
        """Keep the model's wake hooks from finishing until released: a test that looks at a
        model while it wakes then needs no guess of how long a wake must take."""
        flag = self.dir / f"{model}.hold_wake"
        if holding:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    # ---- what happened -------------------------------------------------------------------------

    def hook_events(self) -> list[HookEvent]:
        return read_hook_log(self.dir / "hooks.log")

    def hook_runs(self) -> list[str]:
        """`model:action` for every hook that started, in order."""
        return [f"{e.model}:{e.action}" for e in self.hook_events() if e.phase == "start"]

    def assert_single_awake(self) -> None:
        """From the hook log: no wake starts before the previous model's sleep has ended
        (with declared resources: before its needs fit beside every model that may be awake)."""
        config = self.app.config
        if config.resources is None:
            assert single_awake_violations(self.hook_events(), self.initially_awake) == []
        else:
            capacity = settings_from_config(config).capacity(config.models)
            events = self.hook_events()
            assert capacity_violations(events, capacity, self.initially_awake) == []

    async def hooks_become(self, expected: list[str]) -> None:
        """Wait (bounded) until the hook log shows exactly `expected`: hooks are other
        processes, so polling their log is the only way to see them."""
        await wait_until(
            lambda: self.hook_runs() == expected,
            what=lambda: f"hook runs {expected}; they are {self.hook_runs()}",
        )

    async def hook_ended(self, model: str, action: str) -> None:
        """Wait (bounded) until a `model` `action` hook has run to its end."""
        await wait_until(
            lambda: any(
                (e.model, e.action, e.phase) == (model, action, "end") for e in self.hook_events()
            ),
            what=f"the end of a {model} {action} hook",
        )

    def state(self, model: str) -> str:
        """The model's lifecycle state, as llmux (in this process) has it now."""
        return self.app.model_actors[model].core.state

    def refused(self) -> int:
        return sum(backend.refused for backend in self.backends.values())

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = (await self.client.get("/metrics")).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, frozenset(labels.items())), 0.0)

    async def chat(self, model: str, **fields: Any) -> httpx.Response:
        return await self.client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], **fields},
        )


async def _serve_backend(
    backend: GatedStandin, port: int, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    with trio.CancelScope() as scope:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started(scope)
        await trio.serve_listeners(backend.handle_connection, listeners)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    models: tuple[str, ...] = ("a", "b"),
    *,
    shutdown_grace_secs: float = 5.0,
    awake_at_start: tuple[str, ...] = (),
    health_interval_secs: float | None = None,
    max_queue: int = 1024,
    max_in_flight: int | None = None,
    limits: Limits | None = None,
    api_keys: tuple[str, ...] = (),
    idle_sleep_secs: float | None = None,
    preload: str | list[str] | None = None,
    alive: bool = True,
    resources: dict[str, float] | None = None,
    needs: dict[str, dict[str, float]] | None = None,
    persistent: tuple[str, ...] = (),
    **policy: Any,
) -> AsyncIterator[Rig]:
    """llmux and one gated backend per model; on exit, a graceful shutdown, then the check
    that no request ever reached a sleeping backend.

    Models listed in `awake_at_start` are loaded before llmux starts (llmux finds them with
    their `alive` hook, which every model gets unless `alive` is false)."""
    for name in awake_at_start:
        (tmp_path / f"{name}.awake").touch()
    async with trio.open_nursery() as nursery:
        backends: dict[str, GatedStandin] = {}
        ports: dict[str, int] = {}
        scopes: dict[str, trio.CancelScope] = {}
        for name in models:
            backend = GatedStandin(name, tmp_path / f"{name}.awake")
            with socket.socket() as probe:
                # A free port the backend can be restarted on (see Rig.restart_backend).
                probe.bind(("127.0.0.1", 0))
                ports[name] = probe.getsockname()[1]
            scopes[name] = await nursery.start(_serve_backend, backend, ports[name])
            backends[name] = backend
        config = Config(
            models={
                name: ModelConfig(
                    port=ports[name],
                    wake=f"sh {HOOK} wake {tmp_path}",
                    sleep=f"sh {HOOK} sleep {tmp_path}",
                    alive=f"sh {HOOK} alive {tmp_path}" if alive else None,
                    health_interval_secs=health_interval_secs,
                    max_queue=max_queue,
                    max_in_flight=max_in_flight,
                    idle_sleep_secs=idle_sleep_secs,
                    needs=None if needs is None else needs.get(name, {}),
                    persistent=name in persistent,
                )
                for name in models
            },
            resources=resources,
            policy=PolicySettings(**policy),
            port=0,
            shutdown_grace_secs=shutdown_grace_secs,
            limits=limits if limits is not None else Limits(),
            api_keys=list(api_keys),
            preload=preload,
            base_dir=str(tmp_path),
            # Not the user's ~/.local/state: the test's own, gone with its tmp_path.
            state_dir=str(tmp_path / "state"),
        )
        app = App(config)
        stopped = trio.Event()

        async def serve(task_status: trio.TaskStatus[int]) -> None:
            try:
                await app.serve(task_status=task_status)
            finally:
                stopped.set()

        port = await nursery.start(serve)
        url = f"http://127.0.0.1:{port}"
        headers = {"authorization": f"Bearer {api_keys[0]}"} if api_keys else {}
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
            rig = Rig(
                tmp_path,
                app,
                backends,
                client,
                url,
                frozenset(awake_at_start),
                ports,
                scopes,
                nursery,
            )
            yield rig
        app.shutdown_requested.set()
        with trio.fail_after(20):
            await stopped.wait()
        nursery.cancel_scope.cancel()
    assert rig.refused() == 0, "a request reached a sleeping backend"
    rig.assert_single_awake()
