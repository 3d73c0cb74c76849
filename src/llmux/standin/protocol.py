"""What the stand-in answers: completion requests parsed, bodies and SSE events built."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

RECEIVE_SIZE = 65536
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_TOKENS = 8
MAX_TOKENS = 100_000
POLL_INTERVAL = 0.02

_CHAT_PATH = b"/v1/chat/completions"
_TEXT_PATH = b"/v1/completions"
_JSON = (b"content-type", b"application/json")
# h11 adds this itself only once it has parsed a request; a garbled one still needs it.
_CLOSE = (b"connection", b"close")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

_encode = msgspec.json.Encoder().encode


# --------------------------------------------------------------------------- request parsing


class _CompletionFields(msgspec.Struct):
    # `object` everywhere: a field of an unexpected type falls back to its default instead of
    # failing the request, and msgspec skips every other field without building it.
    model: object = None
    stream: object = False
    max_tokens: object = None
    chunk_delay: object = None


_decode_completion = msgspec.json.Decoder(_CompletionFields).decode


class _BadRequest(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Completion:
    chat: bool
    model: object
    stream: bool
    tokens: int
    chunk_delay: float


def _parse_completion(body: bytes, *, chat: bool, name: str, chunk_delay: float) -> _Completion:
    try:
        fields = _decode_completion(body)
    except msgspec.DecodeError as exc:
        raise _BadRequest(f"Invalid JSON body: {exc}") from None
    tokens = fields.max_tokens
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        tokens = DEFAULT_TOKENS
    delay = fields.chunk_delay
    if not isinstance(delay, int | float) or isinstance(delay, bool):
        delay = chunk_delay
    return _Completion(
        chat=chat,
        model=name if fields.model is None else fields.model,
        stream=fields.stream is True,
        tokens=max(0, min(tokens, MAX_TOKENS)),
        chunk_delay=max(0.0, float(delay)),
    )


# ----------------------------------------------------------------------------- response bodies


@functools.lru_cache(maxsize=64)
def _text(tokens: int) -> str:
    return " ".join(f"tok{i}" for i in range(tokens))


def _error(message: str) -> bytes:
    return _encode({"error": {"message": message, "type": "invalid_request_error"}})


def _completion_body(req: _Completion, number: int, name: str) -> bytes:
    text = _text(req.tokens)
    if req.chat:
        kind = "chat.completion"
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
    else:
        kind = "text_completion"
        choice = {"text": text}
    return _encode(
        {
            "id": f"cmpl-{number}",
            "object": kind,
            "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, **choice, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": req.tokens,
                "total_tokens": req.tokens + 1,
            },
            "backend": name,
            "request_number": number,
        }
    )


def _sse_events(req: _Completion, number: int) -> Iterator[bytes]:
    """Every SSE event of a streamed completion, the final `[DONE]` included."""
    base = {
        "id": f"cmpl-{number}",
        "object": "chat.completion.chunk" if req.chat else "text_completion",
        "created": int(time.time()),
        "model": req.model,
    }
    for i in range(req.tokens + 1):
        piece = f"tok{i} " if i < req.tokens else None
        choice: dict[str, Any] = {"index": 0}
        if req.chat:
            delta: dict[str, str] = {} if piece is None else {"content": piece}
            if i == 0 and piece is not None:
                delta = {"role": "assistant", **delta}
            choice["delta"] = delta
        else:
            choice["text"] = piece or ""
        choice["finish_reason"] = None if piece is not None else "stop"
        yield b"data: " + _encode({**base, "choices": [choice]}) + b"\n\n"
    yield b"data: [DONE]\n\n"
