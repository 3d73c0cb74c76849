"""The connections of one listening server: how many are open, which are idle (so a shutdown
can drop them), and whether the server is closing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import h11
import trio

from llmux.config import Limits
from llmux.http.connection import HttpConnection


class Router(Protocol):
    """What the HTTP layer hands each request to (llmux.routes.Router)."""

    def admit(self, path: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Raise LlmuxError if the request may not be served (the auth gate); called before
        its body is read."""

    async def route(
        self,
        conn: HttpConnection,
        request: h11.Request,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """Answer the request on `conn` (or raise LlmuxError)."""


class HttpServer:
    def __init__(
        self,
        router: Router,
        *,
        limits: Limits | None = None,
        on_closing: Callable[[], None] = lambda: None,
    ) -> None:
        self.router = router
        self.limits = limits if limits is not None else Limits()
        self.closing = False
        self._on_closing = on_closing
        # Connections waiting for their next request: a shutdown cancels these at once.
        self.idle: set[trio.CancelScope] = set()
        self.open_connections = 0
        self._all_closed = trio.Event()

    def begin_closing(self) -> None:
        """Stop keeping connections alive and drop the idle ones."""
        self.closing = True
        self._on_closing()
        for scope in list(self.idle):
            scope.cancel()
        if self.open_connections == 0:
            self._all_closed.set()

    async def wait_all_closed(self) -> None:
        await self._all_closed.wait()

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        self.open_connections += 1
        try:
            await HttpConnection(stream, self).serve()
        finally:
            self.open_connections -= 1
            if self.closing and self.open_connections == 0:
                self._all_closed.set()
