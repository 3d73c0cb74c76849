"""The request-head limits h11 does not enforce itself, and h11's own refusals as our errors."""

from __future__ import annotations

import h11

from llmux.config import Limits
from llmux.errors import ErrorKind, LlmuxError

# h11's status hint for a request it cannot parse, as our error kinds.
PROTOCOL_ERRORS = {
    400: ErrorKind.BAD_REQUEST,
    413: ErrorKind.BODY_TOO_LARGE,
    431: ErrorKind.HEADERS_TOO_LARGE,
}


def check_head(request: h11.Request, headers: list[tuple[bytes, bytes]], limits: Limits) -> None:
    """431 for too many headers, or a head too large (h11 bounds only a head that arrives in
    pieces; one that came whole is measured here)."""
    if len(headers) > limits.max_headers:
        raise LlmuxError(
            ErrorKind.HEADERS_TOO_LARGE, f"More than {limits.max_headers} request headers"
        )
    head_size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in headers)
    if head_size > limits.max_header_bytes:
        raise LlmuxError(
            ErrorKind.HEADERS_TOO_LARGE,
            f"Request headers larger than {limits.max_header_bytes} bytes",
        )
