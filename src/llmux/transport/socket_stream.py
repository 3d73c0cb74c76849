"""A socket driven directly (the front end's client connections and the upstream pool's
backend connections alike), and a one-task wake-up primitive."""

from __future__ import annotations

import select
import socket

import trio

RECEIVE_SIZE = 65536


class SocketStream(trio.abc.Stream):
    """A socket driven directly: trio's SocketStream yields to the scheduler after every
    successful send and recv; here only real waits do. Each request still waits at least
    twice (for its bytes, for the backend), so the connection stays a good citizen."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()

    @property
    def socket(self) -> socket.socket:
        return self._sock

    @classmethod
    def adopt(cls, stream: trio.SocketStream) -> SocketStream:
        """Take over the socket of trio's stream (serve_listeners closes the empty husk)."""
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(False)
        return cls(sock)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # Only the connection's reader calls this, and only once what came before was taken:
        # waiting first spares a recv() that would almost always fail with EAGAIN.
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                return self._sock.recv(max_bytes or RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"connection lost: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
                continue
            except OSError as exc:
                if self._sock.fileno() == -1:
                    raise trio.ClosedResourceError("the connection was closed") from exc
                raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
            view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    def readable_now(self) -> bool:
        """Whether a recv() would not block right now: on an idle connection, almost surely
        the peer's FIN. One poll() call."""
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([self._fd], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        # Wakes (with ClosedResourceError) any task trio has waiting on the socket, and drops
        # trio's registration before the descriptor number can be reused.
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class Wakeup:
    """Lets one task sleep until another has something for it (no object per wait)."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        self._task = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)
