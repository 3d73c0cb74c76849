"""GET /llmux/models/NAME/logs: the tail of a managed engine process's output.

An `engine` (llmux.engines) appends its process's stdout and stderr to
`STATE_DIR/logs/NAME.log`; this is the first thing to read when a wake fails. `?bytes=N`
asks for the last N bytes (default 64 KiB, at most 1 MiB). Streaming with `?follow=1` is not
served yet.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from llmux.engines import logs_path
from llmux.errors import ErrorKind, LlmuxError
from llmux.http.connection import HttpConnection

DEFAULT_BYTES = 64 * 1024
MAX_BYTES = 1024 * 1024
TEXT = (b"content-type", b"text/plain; charset=utf-8")


def tail(path: Path, size: int) -> bytes:
    with path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - size))
        return log.read()


def requested_bytes(target: bytes) -> int:
    query = urllib.parse.parse_qs(target.partition(b"?")[2].decode("ascii", "replace"))
    values = query.get("bytes")
    if not values:
        return DEFAULT_BYTES
    try:
        size = int(values[-1])
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_BYTES:
        raise LlmuxError(
            ErrorKind.BAD_REQUEST, f"bytes must be 1 to {MAX_BYTES}, not {values[-1]!r}"
        )
    return size


async def model_logs(conn: HttpConnection, model: str, state_dir: str, target: bytes) -> None:
    size = requested_bytes(target)
    path = Path(logs_path(state_dir, model))
    try:
        body = tail(path, size)
    except FileNotFoundError:
        raise LlmuxError(
            ErrorKind.NOT_FOUND,
            f"No output captured for {model}: only a model with an `engine` has its process's "
            f"output kept, from its first wake on",
        ) from None
    await conn.respond(200, body, content_type=TEXT)
