"""Routes that only show: the model list, metrics, health, the status JSON and the page."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources

import msgspec

HTML = (b"content-type", b"text/html; charset=utf-8")
PROMETHEUS = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
HEALTHY = b'{"status":"ok"}'


def models_listing(models: Iterable[str]) -> bytes:
    """`GET /v1/models` in OpenAI's shape (the same bytes for every request)."""
    return msgspec.json.encode(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "llmux"}
                for name in sorted(models)
            ],
        }
    )


@functools.cache
def ui_page() -> bytes:
    try:
        return resources.files("llmux.ui").joinpath("index.html").read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        return b"<!doctype html><title>llmux</title><p>The status page is not installed."
