"""Upstream: the client side towards the backends. `reader` parses responses (sans-I/O),
`pool` keeps connections and drives the sockets."""

from llmux.upstream.errors import BackendUnreachable, UpstreamError
from llmux.upstream.pool import UpstreamPool, UpstreamResponse
from llmux.upstream.reader import MAX_HEAD_BYTES, MalformedResponse

__all__ = [
    "MAX_HEAD_BYTES",
    "BackendUnreachable",
    "MalformedResponse",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
]
