"""The proxy route: a request for a model waits for its model's grant, then the backend's
response is relayed as it arrives.

Each proxied request becomes an `Acquire` to its model's actor and always ends with a
`Finish`, sent from a `finally`, so no cancellation path (client gone, timeout, shutdown) can
leak a queued waiter or an in-flight slot.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping

import h11
import msgspec
import trio

from llmux.actors import ModelActor
from llmux.core.messages import Reject
from llmux.errors import CLIENT_GONE, CutConnection, ErrorKind, LlmuxError
from llmux.http.connection import HttpConnection
from llmux.observability.logs import log_event
from llmux.observability.telemetry import Telemetry
from llmux.upstream import BackendUnreachable, UpstreamError, UpstreamPool

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {b"host", b"content-length", b"expect"}


class _ModelField(msgspec.Struct):
    # `object`, so a non-string model is reported as such rather than as bad JSON.
    model: object = None


_model_decoder = msgspec.json.Decoder(_ModelField)


def extract_model(body: bytes) -> str:
    """The `model` of a JSON request body; decodes that one field only."""
    if not body.strip():
        raise LlmuxError(ErrorKind.NO_MODEL, "No model specified in request")
    try:
        model = _model_decoder.decode(body).model
    except msgspec.ValidationError as exc:
        raise LlmuxError(
            ErrorKind.BAD_REQUEST, f"Request body must be a JSON object: {exc}"
        ) from exc
    except msgspec.DecodeError as exc:
        raise LlmuxError(ErrorKind.BAD_REQUEST, f"Invalid JSON in request body: {exc}") from exc
    if model is None:
        raise LlmuxError(ErrorKind.NO_MODEL, "No model specified in request")
    if not isinstance(model, str):
        raise LlmuxError(ErrorKind.BAD_REQUEST, "The `model` field must be a string")
    return model


def forwardable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    listed = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in headers if n not in _NOT_FORWARDED and n not in listed]


class ProxiedRequest:
    """What became of one proxied request, for its log line, its metrics and a shutdown."""

    __slots__ = (
        "bytes_sent",
        "duration",
        "model",
        "req_id",
        "started",
        "status",
        "streamed",
        "waited",
    )

    def __init__(self, req_id: int, model: str, started: float) -> None:
        self.req_id = req_id
        self.model = model
        self.started = started
        # Until an answer goes out, the request ends with its client gone (nginx's 499).
        self.status = CLIENT_GONE
        self.waited: float | None = None  # in llmux's queue, once granted or refused
        self.bytes_sent = 0  # of the response body
        self.streamed = False
        self.duration = 0.0


class Proxy:
    def __init__(
        self, models: Mapping[str, ModelActor], pool: UpstreamPool, telemetry: Telemetry
    ) -> None:
        self.models = models
        self.pool = pool
        self.telemetry = telemetry
        # Proxied requests not finished yet, so that a shutdown can say which it cut.
        self.in_progress: dict[int, ProxiedRequest] = {}
        self._ids = itertools.count()

    def cut_remaining(self, grace: float) -> int:
        """Log each proxied request still running when the grace period is over (they are
        about to be cut); returns how many."""
        for request in self.in_progress.values():
            log_event(
                "request_cut",
                f"request {request.req_id} for {request.model} cut by the shutdown after "
                f"{grace:g}s of grace ({request.bytes_sent} bytes sent)",
                level=logging.WARNING,
                req_id=request.req_id,
                model=request.model,
                bytes=request.bytes_sent,
                streamed=request.streamed,
            )
        return len(self.in_progress)

    async def handle(
        self,
        conn: HttpConnection,
        request: h11.Request,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        model = extract_model(body)
        actor = self.models.get(model)
        if actor is None:
            raise LlmuxError(ErrorKind.MODEL_NOT_FOUND, f"Model not found: {model}")
        req_id = next(self._ids)
        progress = ProxiedRequest(req_id, model, trio.current_time())
        ticket = actor.acquire(req_id)
        self.in_progress[req_id] = progress
        try:

            async def serve() -> None:
                outcome = await ticket.wait()
                progress.waited = outcome.waited
                if isinstance(outcome, Reject):
                    error = LlmuxError.from_reject(outcome)
                    progress.status = error.status
                    await conn.respond_error(error)
                    return
                await self._forward(conn, request, headers, body, actor, progress)

            await conn.while_client_connected(serve)
        finally:
            actor.finish(req_id)
            del self.in_progress[req_id]
            progress.duration = trio.current_time() - progress.started
            self.telemetry.request_finished(progress)

    async def _forward(
        self,
        conn: HttpConnection,
        request: h11.Request,
        request_headers: list[tuple[bytes, bytes]],
        body: bytes,
        actor: ModelActor,
        progress: ProxiedRequest,
    ) -> None:
        """Relay the backend's response as it arrives, noting in `progress` what was sent."""
        headers = forwardable(request_headers)
        try:
            async with self.pool.request(
                actor.config.port, request.method, request.target, headers, body
            ) as response:
                response_headers = forwardable(response.headers)
                if conn.closing:
                    response_headers.append((b"connection", b"close"))
                if _has_length(response.headers):
                    length = _content_length(response.headers)
                    response_headers.append((b"content-length", length))
                else:
                    progress.streamed = True  # relayed as it comes (chunked, SSE)
                head = h11.Response(
                    status_code=response.status_code,
                    headers=response_headers,
                    reason=response.reason,
                )
                # Everything that has arrived goes out in one write, and a write happens
                # before every wait for the backend: one syscall for a small response, and a
                # stream's events are never held back.
                protocol = conn.h11
                out = [protocol.send(head) or b""]
                while True:
                    chunks, complete = response.ready_body()
                    for chunk in chunks:
                        progress.bytes_sent += len(chunk)
                        out.append(protocol.send(h11.Data(data=chunk)) or b"")
                    if complete:
                        out.append(protocol.send(h11.EndOfMessage()) or b"")
                    data = b"".join(out)
                    if data:
                        await conn.stream.send_all(data)
                    if complete:
                        # Only now: a client that leaves mid-response is recorded as 499.
                        progress.status = response.status_code
                        return
                    out = []
                    await response.receive_more()
        except UpstreamError as exc:
            if isinstance(exc, BackendUnreachable):
                # Nobody listens where an Active model should: let its core judge (it may
                # take the model out of service, so that the next request wakes it again).
                actor.unreachable(progress.req_id, str(exc))
            if conn.h11.our_state is not h11.SEND_RESPONSE:
                # Headers are out: the only honest signal left is to cut the connection.
                raise CutConnection(f"backend broke mid-response: {exc}") from exc
            error = LlmuxError(ErrorKind.BACKEND_ERROR, f"Backend error: {exc}")
            progress.status = error.status
            await conn.respond_error(error)


def _has_length(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"content-length" for name, _ in headers)


def _content_length(headers: list[tuple[bytes, bytes]]) -> bytes:
    return next(value for name, value in headers if name == b"content-length")
