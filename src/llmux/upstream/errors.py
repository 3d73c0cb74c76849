"""The upstream client's errors: what the proxy maps to 502 (or a cut stream)."""

from __future__ import annotations


class UpstreamError(Exception):
    """Backend unreachable, or it broke the HTTP protocol / closed mid-response."""


class BackendUnreachable(UpstreamError):
    """No connection could be made: nothing listens on the port, or the connect timed out.
    Nothing was sent, and for an Active model this is a sign its backend is gone."""


class _NoResponse(UpstreamError):
    """The connection failed before any response byte arrived, so a retry is safe."""
