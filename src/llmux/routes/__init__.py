"""Application routes: one table from method and path to a handler, behind one auth gate.

GET  /v1/models, /metrics, /health    info
GET  /llmux/ (page), /llmux/status    info
GET  /llmux/events                    events (SSE)
GET  /llmux/models/NAME/logs          logs (a managed engine's output)
POST /llmux/models/NAME/wake|sleep, /llmux/pin, /llmux/unpin    control
anything else                         proxy (the model is named in the JSON body)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import h11
import msgspec
import trio

from llmux.actors import ModelActor, SchedulerActor
from llmux.errors import ErrorKind, LlmuxError
from llmux.http.connection import HttpConnection
from llmux.observability.metrics import Metrics
from llmux.observability.status import build_status
from llmux.observability.telemetry import Telemetry
from llmux.routes import control, info, logs
from llmux.routes.auth import ApiKeys
from llmux.routes.events import stream_events
from llmux.routes.proxy import Proxy
from llmux.upstream import UpstreamPool

Handler = Callable[[HttpConnection], Awaitable[None]]


class Router:
    def __init__(
        self,
        models: Mapping[str, ModelActor],
        scheduler: SchedulerActor,
        pool: UpstreamPool,
        metrics: Metrics,
        telemetry: Telemetry,
        *,
        api_keys: Sequence[str] = (),
        state_dir: str | None = None,
    ) -> None:
        self.models = dict(models)
        # Where engines keep their processes' output (None: no logs route).
        self.state_dir = state_dir
        self.scheduler = scheduler
        self.telemetry = telemetry
        self.gate = ApiKeys(api_keys)
        self.proxy = Proxy(self.models, pool, telemetry)
        listing = info.models_listing(self.models)
        # The table: (method, path) -> handler, for the routes with a fixed path.
        self.table: dict[tuple[bytes, bytes], Handler] = {
            (b"GET", b"/v1/models"): lambda conn: conn.respond(200, listing),
            (b"GET", b"/metrics"): lambda conn: conn.respond(
                200, metrics.render(), content_type=info.PROMETHEUS
            ),
            (b"GET", b"/health"): lambda conn: conn.respond(200, info.HEALTHY),
            (b"GET", b"/llmux"): self._page,
            (b"GET", b"/llmux/status"): self._status,
            (b"GET", b"/llmux/events"): lambda conn: stream_events(conn, telemetry.journal),
        }

    def admit(self, path: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.gate.admit(path, headers)

    async def route(
        self,
        conn: HttpConnection,
        request: h11.Request,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        path = request.target.split(b"?", 1)[0]
        ours = path == b"/llmux" or path.startswith(b"/llmux/")
        if ours:
            path = path.rstrip(b"/")  # /llmux/status/ is /llmux/status
        handler = self.table.get((request.method, path))
        if handler is not None:
            await handler(conn)
        elif ours:
            route = path.decode("ascii", "replace").removeprefix("/llmux").strip("/").split("/")
            if (
                request.method == b"GET"
                and len(route) == 3
                and route[0] == "models"
                and route[2] == "logs"
                and route[1] in self.models
                and self.state_dir is not None
            ):
                await logs.model_logs(conn, route[1], self.state_dir, request.target)
                return
            handled = await control.handle(
                conn,
                request.method,
                request.target,
                route,
                body,
                models=self.models,
                scheduler=self.scheduler,
            )
            if not handled:
                method = request.method.decode("ascii", "replace")
                where = path.decode("ascii", "replace")
                raise LlmuxError(ErrorKind.NOT_FOUND, f"Not found: {method} {where}")
        else:
            await self.proxy.handle(conn, request, headers, body)

    async def _page(self, conn: HttpConnection) -> None:
        await conn.respond(200, info.ui_page(), content_type=info.HTML)

    async def _status(self, conn: HttpConnection) -> None:
        picture = build_status(
            self.models, self.scheduler, self.telemetry.journal, trio.current_time()
        )
        await conn.respond(200, msgspec.json.encode(picture))
