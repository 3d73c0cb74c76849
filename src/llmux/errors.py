"""The one error boundary: every error llmux answers with, and how it looks on the wire.

Code that refuses a request raises `LlmuxError(kind, message)` (or the core returns a
`Reject`, mapped by `REJECTION`); the HTTP side turns it into a status, an OpenAI-shaped body
`{"error": {"message", "type"}}` and headers with `ERRORS`, and nowhere else.

`should_retry` is the `x-should-retry` header that the official OpenAI SDKs obey (they retry
408, 409, 429 and 5xx twice by default): `False` where a retry cannot help (a failed wake
hook would run again, and again), `None` to leave the SDK's default.
"""

from __future__ import annotations

import enum

import msgspec

from llmux.core.messages import Reject, RejectReason

# The status a request is recorded with when its client left first (nginx's convention).
CLIENT_GONE = 499


class ErrorKind(enum.Enum):
    BAD_REQUEST = enum.auto()
    NO_MODEL = enum.auto()
    MODEL_NOT_FOUND = enum.auto()
    NOT_FOUND = enum.auto()
    METHOD_NOT_ALLOWED = enum.auto()
    UNAUTHENTICATED = enum.auto()
    BODY_TOO_LARGE = enum.auto()
    HEADERS_TOO_LARGE = enum.auto()
    CLIENT_TOO_SLOW = enum.auto()
    CONFLICT = enum.auto()
    HOOK_FAILED = enum.auto()
    BACKEND_ERROR = enum.auto()
    QUEUE_FULL = enum.auto()
    SHUTTING_DOWN = enum.auto()
    PINNED = enum.auto()
    QUEUE_TIMEOUT = enum.auto()
    INTERNAL = enum.auto()


class ErrorSpec(msgspec.Struct, frozen=True):
    status: int
    type: str = "llmux_error"
    should_retry: bool | None = None
    # Seconds, for the Retry-After header of errors that go away by themselves.
    retry_after: int | None = None


# A full queue empties when its model next wakes; a switch typically takes seconds.
_SOON = 5

ERRORS: dict[ErrorKind, ErrorSpec] = {
    ErrorKind.BAD_REQUEST: ErrorSpec(400, should_retry=False),
    ErrorKind.NO_MODEL: ErrorSpec(404, should_retry=False),
    ErrorKind.MODEL_NOT_FOUND: ErrorSpec(404, should_retry=False),
    ErrorKind.NOT_FOUND: ErrorSpec(404, should_retry=False),
    ErrorKind.METHOD_NOT_ALLOWED: ErrorSpec(405, should_retry=False),
    ErrorKind.UNAUTHENTICATED: ErrorSpec(401, "authentication_error", should_retry=False),
    ErrorKind.BODY_TOO_LARGE: ErrorSpec(413, should_retry=False),
    ErrorKind.HEADERS_TOO_LARGE: ErrorSpec(431, should_retry=False),
    # The client was too slow sending its request; a new attempt may be quicker.
    ErrorKind.CLIENT_TOO_SLOW: ErrorSpec(408),
    ErrorKind.CONFLICT: ErrorSpec(409, should_retry=False),
    # The wake hook failed: retrying runs it again (the SDK's two retries ran it three times).
    ErrorKind.HOOK_FAILED: ErrorSpec(500, should_retry=False),
    # The backend failed this request; the model may be taken out of service and woken again.
    ErrorKind.BACKEND_ERROR: ErrorSpec(502),
    ErrorKind.QUEUE_FULL: ErrorSpec(503, should_retry=True, retry_after=_SOON),
    ErrorKind.SHUTTING_DOWN: ErrorSpec(503, should_retry=True, retry_after=_SOON),
    # Refused until an operator unpins: a quick retry will meet the same refusal.
    ErrorKind.PINNED: ErrorSpec(503, should_retry=False),
    ErrorKind.QUEUE_TIMEOUT: ErrorSpec(504),
    ErrorKind.INTERNAL: ErrorSpec(500),
}

REJECTION: dict[RejectReason, ErrorKind] = {
    RejectReason.TIMEOUT: ErrorKind.QUEUE_TIMEOUT,
    RejectReason.HOOK_FAILED: ErrorKind.HOOK_FAILED,
    RejectReason.SHUTTING_DOWN: ErrorKind.SHUTTING_DOWN,
    RejectReason.QUEUE_FULL: ErrorKind.QUEUE_FULL,
    RejectReason.PINNED: ErrorKind.PINNED,
}


class LlmuxError(Exception):
    """A request llmux refuses, with the message the client reads."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @classmethod
    def from_reject(cls, reject: Reject) -> LlmuxError:
        return cls(REJECTION[reject.reason], reject.detail)

    @property
    def status(self) -> int:
        return ERRORS[self.kind].status

    def body(self) -> bytes:
        spec = ERRORS[self.kind]
        return msgspec.json.encode({"error": {"message": self.message, "type": spec.type}})

    def headers(self) -> list[tuple[bytes, bytes]]:
        spec = ERRORS[self.kind]
        headers: list[tuple[bytes, bytes]] = []
        if spec.should_retry is not None:
            headers.append((b"x-should-retry", b"true" if spec.should_retry else b"false"))
        if spec.retry_after is not None:
            headers.append((b"retry-after", str(spec.retry_after).encode()))
        return headers


class ClientGone(Exception):
    """The client hung up (or its connection broke): nobody is left to answer."""


class CutConnection(Exception):
    """A response cannot be finished (the backend broke after its head went out): the only
    honest signal left to the client is to close its connection."""
