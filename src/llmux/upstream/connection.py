"""One keep-alive connection to a backend: a request out, the response in through the reader."""

from __future__ import annotations

import socket

import trio

from llmux.transport.socket_stream import SocketStream
from llmux.upstream.errors import UpstreamError, _NoResponse
from llmux.upstream.reader import (
    MalformedResponse,
    ResponseHead,
    _ResponseReader,
)

RECEIVE_SIZE = 65536
# Up to this size the head and body go out in one write (one syscall, one segment on loopback);
# beyond it, copying the body to prepend the head costs more than a second write.
COALESCE_LIMIT = 65536


class _Connection:
    __slots__ = ("close_after", "reader", "stream", "where")

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.stream = SocketStream(sock)
        self.where = where
        self.reader = _ResponseReader()
        self.close_after = False

    async def send_request(self, method: bytes, head: bytes, body: bytes) -> None:
        self.reader.start(method)
        parts = [head + body] if len(body) <= COALESCE_LIMIT else [head, body]
        try:
            for part in parts:
                # A request almost always fits the socket buffer: sent at once, no wait.
                await self.stream.send_all(part)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            why = exc.__cause__ or exc
            raise _NoResponse(f"backend on {self.where} dropped the connection: {why}") from exc

    async def receive_head(self) -> ResponseHead:
        """The final response head, skipping 1xx; `_NoResponse` if nothing came back."""
        got_bytes = False
        while True:
            try:
                head = self.reader.head()
            except MalformedResponse as exc:
                raise self._broke(exc) from exc
            if head is not None:
                return head
            try:
                data = await self._receive()
            except UpstreamError as exc:
                if got_bytes:
                    raise
                raise _NoResponse(str(exc)) from exc
            if not data and not got_bytes:
                raise _NoResponse(
                    f"backend on {self.where} closed the connection without responding"
                )
            got_bytes = True

    async def next_body_chunk(self) -> bytes | None:
        """The next piece of the body as soon as it arrives; None once the body is complete."""
        while True:
            chunks, complete = self.ready_body()
            if chunks:
                # Pieces that arrived together are one chunk to the caller.
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if complete:
                return None
            await self._receive()

    def ready_body(self) -> tuple[list[bytes], bool]:
        """The body chunks already received, without waiting; True once the body is complete.

        Lets a relay send everything that has arrived in one write, and write only when it
        would otherwise wait: nothing is ever held back while more is awaited.
        """
        chunks: list[bytes] = []
        try:
            complete = self.reader.body(chunks)
        except MalformedResponse as exc:
            raise self._broke(exc) from exc
        return chunks, complete

    async def receive_more(self) -> None:
        """Wait for the next bytes from the backend (the body goes on: see `ready_body`)."""
        await self._receive()

    def reusable(self) -> bool:
        # Buffered bytes would be ones the backend sent unasked: the next exchange would
        # misread them as its response.
        reader = self.reader
        return (
            reader.complete and reader.keep_alive and not self.close_after and not reader.buffered
        )

    def looks_closed(self) -> bool:
        """Whether an idle connection has something to read, i.e. almost surely a FIN.

        Catching most keep-alive races here is one poll() call, far cheaper than sending the
        request and failing over after the round trip.
        """
        return self.stream.readable_now()

    def close(self) -> None:
        self.stream.close()

    def _broke(self, exc: MalformedResponse) -> UpstreamError:
        return UpstreamError(f"backend on {self.where} broke the HTTP protocol: {exc}")

    async def _receive(self) -> bytes:
        # The backend has not answered yet whenever we get here (everything already received
        # was taken): wait first rather than fail a recv() with EAGAIN.
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            why = exc.__cause__ or exc
            raise UpstreamError(f"connection to backend on {self.where} lost: {why}") from exc
        self.reader.feed(data)
        return data
