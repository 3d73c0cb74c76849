"""Composition root: builds the cores and actors from a Config and runs the server.

Shutdown order (first SIGTERM/SIGINT): stop accepting; answer queued requests with 503; let
in-flight requests and streams finish for `shutdown_grace_secs`; cut what is left; put the
awake model to sleep through the normal drain -> sleep path; exit. A second signal skips
the waiting.
"""

from __future__ import annotations

import ipaddress
import logging
import signal

import trio

from llmux.actors import ModelActor, SchedulerActor
from llmux.config import Config, ModelConfig
from llmux.core.messages import Adopt, Hook, ManualWake
from llmux.core.model import ModelCore
from llmux.core.scheduler import SchedulerCore
from llmux.core.startup import plan_startup
from llmux.hooks import run_hook
from llmux.logs import log_event
from llmux.metrics import Metrics
from llmux.policies import build_policy
from llmux.server import Frontend
from llmux.telemetry import Telemetry
from llmux.upstream import UpstreamPool


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.telemetry = Telemetry(self.metrics)
        settings = config.policy
        self.model_actors = {
            name: ModelActor(
                ModelCore(
                    name,
                    request_timeout=settings.request_timeout_secs,
                    drain_before_switch=settings.drain_before_switch,
                    max_queue=model_config.max_queue,
                    max_in_flight=model_config.max_in_flight,
                    health_interval=model_config.health_interval_secs,
                    alive_probe=model_config.alive is not None,
                ),
                model_config,
                hook_cwd=config.base_dir,
                telemetry=self.telemetry,
            )
            for name, model_config in config.models.items()
        }
        policy = build_policy(settings.type, config.policy_options)
        self.telemetry.declare_models(config.models, policy=policy.name)
        self.scheduler = SchedulerActor(
            SchedulerCore(
                list(config.models),
                policy,
                min_active=settings.min_active_secs,
                idle_sleep={name: m.idle_sleep_secs for name, m in config.models.items()},
            ),
            self.model_actors,
            telemetry=self.telemetry,
        )
        self.pool = UpstreamPool()
        self.frontend = Frontend(
            self.model_actors,
            self.pool,
            self.metrics,
            self.telemetry,
            limits=config.limits,
            api_keys=config.api_keys,
        )
        self.frontend.scheduler = self.scheduler
        self.shutdown_requested = trio.Event()
        self.port: int | None = None

    async def serve(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until `shutdown_requested` is set, then shut down gracefully."""
        host = host if host is not None else self.config.host
        port = port if port is not None else self.config.port
        async with trio.open_nursery() as actors:
            actors.start_soon(self.scheduler.run)
            for actor in self.model_actors.values():
                actors.start_soon(actor.run)
            await self._adopt_awake_models()
            listeners = await trio.open_tcp_listeners(port, host=host)
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as connections:
                accepting = trio.CancelScope()
                connections.start_soon(self._accept, listeners, connections, accepting)
                log_event(
                    "listening",
                    f"llmux listening on http://{host}:{self.port}",
                    host=host,
                    port=self.port,
                    models=sorted(self.model_actors),
                )
                if not self.config.api_keys and not _is_loopback(host):
                    log_event(
                        "insecure_listen",
                        f"listening on {host} without api_keys: anyone who can reach this "
                        "address can use (and wake) every model",
                        level=logging.WARNING,
                        host=host,
                    )
                task_status.started(self.port)
                await self.shutdown_requested.wait()
                log_event("shutdown_started", "shutting down: no new connections")
                accepting.cancel()
                for listener in listeners:
                    await listener.aclose()
                self.frontend.begin_closing()
                self.scheduler.shutdown()
                with trio.move_on_after(self.config.shutdown_grace_secs):
                    await self.frontend.wait_all_closed()
                connections.cancel_scope.cancel()
            longest_sleep = max(m.sleep_timeout_secs for m in self.config.models.values())
            with trio.move_on_after(longest_sleep + 5):
                await self.scheduler.quiet.wait()
            await self.pool.aclose()
            actors.cancel_scope.cancel()
        log_event("shutdown_complete", "llmux stopped")

    async def _adopt_awake_models(self) -> None:
        """Probe the models that have an `alive` hook before serving anything."""
        alive: dict[str, bool] = {}

        async def probe(name: str, model: ModelConfig) -> None:
            command, timeout = model.hook(Hook.ALIVE)
            assert command is not None
            outcome = await run_hook(
                command, model=name, port=model.port, cwd=self.config.base_dir, timeout=timeout
            )
            alive[name] = outcome.ok

        async with trio.open_nursery() as probes:
            for name, model in self.config.models.items():
                if model.alive is not None:
                    probes.start_soon(probe, name, model)
        plan = plan_startup(list(self.config.models), alive)
        async with trio.open_nursery() as sleepers:
            for name in plan.put_to_sleep:
                log_event(
                    "startup_sleep",
                    f"{name} was awake at start-up besides {plan.adopt}: putting it to sleep",
                    level=logging.WARNING,
                    model=name,
                )
                sleepers.start_soon(self._sleep_now, name)
        if plan.adopt is None and self.config.preload is not None:
            self.scheduler.post(ManualWake(self.config.preload, "preload"))
        if plan.adopt is not None:
            self.model_actors[plan.adopt].post(Adopt("alive hook succeeded at start-up"))
            # Serve nothing before the scheduler knows: a request for another model must not
            # find the GPU looking free.
            adopted = plan.adopt
            await self.scheduler.wait_for(lambda core: core.active == adopted)

    async def _sleep_now(self, name: str) -> None:
        model = self.config.models[name]
        command, timeout = model.hook(Hook.SLEEP)
        assert command is not None
        outcome = await run_hook(
            command, model=name, port=model.port, cwd=self.config.base_dir, timeout=timeout
        )
        self.telemetry.hook_finished(name, Hook.SLEEP, outcome)

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        connections: trio.Nursery,
        accepting: trio.CancelScope,
    ) -> None:
        with accepting:
            await trio.serve_listeners(
                self.frontend.handle_connection, listeners, handler_nursery=connections
            )

    async def watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.shutdown_requested.is_set():
                    log_event("shutdown_forced", "second signal: stopping now")
                    raise SystemExit(1)
                log_event("signal", f"received {signal.Signals(signum).name}")
                self.shutdown_requested.set()


async def run(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    app = App(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.watch_signals)
        await app.serve(host=host, port=port)
        nursery.cancel_scope.cancel()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
