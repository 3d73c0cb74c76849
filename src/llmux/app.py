"""Composition root: builds the cores and actors from a Config and runs the server.

Start-up order: bind the listening socket (a port in use is a one-line error before any hook
has touched a model), probe and adopt awake models, then accept connections.

Shutdown order (first SIGTERM/SIGINT): stop accepting; answer queued requests with 503; let
in-flight requests and streams finish for `shutdown_grace_secs`; cut what is left (each cut
logged); put the awake model to sleep through the normal drain -> sleep path; exit. A second
signal stops at once: running hooks and the awake model's wake-hook process group are killed.
The exit status is 0 for a clean shutdown and 1 when it was forced (second signal, or
requests cut at the end of the grace period).
"""

from __future__ import annotations

import ipaddress
import logging
import signal

import trio

from llmux.actors import ModelActor, SchedulerActor, SchedulerMailbox
from llmux.build import settings_from_config
from llmux.config import Config
from llmux.core.world import model_core, scheduler_core
from llmux.hooks import HookRunner, ProcessGroups, ShellHooks, prepare_state_dir
from llmux.http.server import HttpServer
from llmux.observability.logs import log_event
from llmux.observability.metrics import Metrics
from llmux.observability.telemetry import Telemetry
from llmux.policies import build_policy
from llmux.routes import Router
from llmux.startup_probe import adopt_awake_models
from llmux.upstream import UpstreamPool

EXIT_CLEAN = 0
EXIT_FORCED = 1


class ListenError(Exception):
    """The listening socket cannot be opened (port in use, address not on this machine)."""


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class App:
    def __init__(self, config: Config, *, hooks: HookRunner | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.telemetry = Telemetry(self.metrics, log_requests=config.log_requests)
        self.process_groups = ProcessGroups()
        self.hooks = hooks if hooks is not None else ShellHooks(config, self.process_groups)
        settings = settings_from_config(config)
        mailbox = SchedulerMailbox()
        self.model_actors = {
            name: ModelActor(
                model_core(name, settings),
                model_config,
                hooks=self.hooks,
                telemetry=self.telemetry,
                scheduler=mailbox,
            )
            for name, model_config in config.models.items()
        }
        policy = build_policy(
            config.policy.type, config.policy_options, search_path=config.base_dir
        )
        self.telemetry.declare_models(config.models, policy=policy.name)
        self.scheduler = SchedulerActor(
            scheduler_core(list(config.models), policy, settings),
            self.model_actors,
            telemetry=self.telemetry,
            mailbox=mailbox,
        )
        self.pool = UpstreamPool()
        self.router = Router(
            self.model_actors,
            self.scheduler,
            self.pool,
            self.metrics,
            self.telemetry,
            api_keys=config.api_keys,
            state_dir=config.state_dir,
        )
        self.http = HttpServer(
            self.router,
            limits=config.limits,
            on_closing=self.telemetry.journal.close_subscribers,
        )
        self.shutdown_requested = trio.Event()
        self.port: int | None = None
        self.exit_status = EXIT_CLEAN

    async def serve(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        listeners: list[trio.SocketListener] | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until `shutdown_requested` is set, then shut down gracefully."""
        host = host if host is not None else self.config.host
        if listeners is None:
            listeners = await open_listeners(host, port if port is not None else self.config.port)
        self.port = listeners[0].socket.getsockname()[1]
        # Before any hook runs: the start-up probes already look for their pid files there.
        prepare_state_dir(self.config.state_dir)
        async with trio.open_nursery() as actors:
            actors.start_soon(self.scheduler.run)
            for actor in self.model_actors.values():
                actors.start_soon(actor.run)
            await adopt_awake_models(
                self.config, self.hooks, self.model_actors, self.scheduler, self.telemetry
            )
            await self._serve_connections(listeners, host, task_status)
            longest_sleep = max(m.sleep_timeout_secs for m in self.config.models.values())
            with trio.move_on_after(longest_sleep + 5):
                await self.scheduler.quiet.wait()
            await self.pool.aclose()
            actors.cancel_scope.cancel()
        log_event("shutdown_complete", "llmux stopped")

    async def _serve_connections(
        self, listeners: list[trio.SocketListener], host: str, task_status: trio.TaskStatus[int]
    ) -> None:
        """Accept and serve until shutdown is asked for, then wind the connections down."""
        async with trio.open_nursery() as connections:
            accepting = trio.CancelScope()
            connections.start_soon(self._accept, listeners, connections, accepting)
            self._announce(host)
            assert self.port is not None
            task_status.started(self.port)
            await self.shutdown_requested.wait()
            log_event("shutdown_started", "shutting down: no new connections")
            accepting.cancel()
            for listener in listeners:
                await listener.aclose()
            self.http.begin_closing()
            self.scheduler.shutdown()
            with trio.move_on_after(self.config.shutdown_grace_secs):
                await self.http.wait_all_closed()
            if self.router.proxy.cut_remaining(self.config.shutdown_grace_secs):
                self.exit_status = EXIT_FORCED
            connections.cancel_scope.cancel()

    def _announce(self, host: str) -> None:
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

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        connections: trio.Nursery,
        accepting: trio.CancelScope,
    ) -> None:
        with accepting:
            await trio.serve_listeners(
                self.http.handle_connection, listeners, handler_nursery=connections
            )

    async def watch_signals(self, everything: trio.CancelScope) -> None:
        """First signal: graceful shutdown. Second: stop now (cancel `everything`)."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.shutdown_requested.is_set():
                    # Cancel first: the hooks killed next then end cancelled, not "failed".
                    everything.cancel()
                    self.force_stop()
                    return
                log_event("signal", f"received {signal.Signals(signum).name}")
                self.shutdown_requested.set()

    def force_stop(self) -> None:
        killed = self.process_groups.kill_all()
        log_event(
            "shutdown_forced",
            f"second signal: stopping now ({killed} hook process group(s) killed)",
            level=logging.WARNING,
            killed_process_groups=killed,
        )
        self.exit_status = EXIT_FORCED


async def run(config: Config, *, host: str | None = None, port: int | None = None) -> int:
    """Serve `config` until a signal; returns the exit status. ListenError if it cannot bind."""
    host = host if host is not None else config.host
    listeners = await open_listeners(host, port if port is not None else config.port)
    app = App(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.watch_signals, nursery.cancel_scope)
        await app.serve(host=host, listeners=listeners)
        nursery.cancel_scope.cancel()
    return app.exit_status


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
