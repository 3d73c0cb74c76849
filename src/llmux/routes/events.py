"""`GET /llmux/events`: Server-Sent Events, the journal so far, then each transition live."""

from __future__ import annotations

from typing import Any

import h11
import msgspec
import trio

from llmux.http.connection import HttpConnection
from llmux.observability.journal import Journal

SSE_KEEPALIVE_SECS = 15.0


async def stream_events(conn: HttpConnection, journal: Journal) -> None:
    with journal.subscribe() as (history, live):
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await conn.send(h11.Response(status_code=200, headers=headers))

        async def relay() -> None:
            await conn.send(h11.Data(data=b"".join(map(_sse, history)) or b": hello\n\n"))
            while not conn.closing:
                with trio.move_on_after(SSE_KEEPALIVE_SECS):
                    try:
                        entry = await live.receive()
                    except trio.EndOfChannel:
                        # Shutting down, or too slow a reader (it reconnects and replays).
                        return
                    await conn.send(h11.Data(data=_sse(entry)))
                    continue
                await conn.send(h11.Data(data=b": keep-alive\n\n"))

        await conn.while_client_connected(relay)
        await conn.send(h11.EndOfMessage())


def _sse(entry: dict[str, Any]) -> bytes:
    return b"event: transition\ndata: " + msgspec.json.encode(entry) + b"\n\n"
