"""The auth gate: API keys, compared in constant time, for every route but the open ones."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from llmux.errors import ErrorKind, LlmuxError

# Routes that answer without a key: a load balancer's probe, and the status page itself
# (a browser cannot send a header when it opens a page; the page then uses the key it is
# given in its URL fragment for everything it fetches, and the page holds no data).
OPEN_PATHS = frozenset({b"/health", b"/llmux", b"/llmux/"})


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key":
            return value.strip()
    return None


def key_is_valid(presented: bytes | None, keys: Sequence[bytes]) -> bool:
    """Compares against every key, each in constant time, so timing reveals nothing."""
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(presented or b"", key)
    return valid


class ApiKeys:
    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = [key.encode() for key in keys]

    def admit(self, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
        if not self.keys or path in OPEN_PATHS:
            return
        presented = presented_key(headers)
        if not key_is_valid(presented, self.keys):
            why = "Invalid API key" if presented is not None else "Missing API key"
            raise LlmuxError(
                ErrorKind.UNAUTHENTICATED,
                f"{why}: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
            )
