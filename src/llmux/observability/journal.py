"""The journal: recent state-machine transitions, for /llmux/status and /llmux/events.

Each entry is a plain dict ready to encode, stamped with wall-clock time. Live subscribers
get entries through bounded channels; one that falls too far behind is dropped rather than
allowed to slow the actors down (its client reconnects and replays the journal).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import trio

from llmux.core.messages import Transition

JOURNAL_SIZE = 300
SUBSCRIBER_BACKLOG = 1000

Entry = dict[str, Any]


class Journal:
    def __init__(self, size: int = JOURNAL_SIZE) -> None:
        self.entries: deque[Entry] = deque(maxlen=size)
        self.last_by_subject: dict[str, Entry] = {}
        self._seq = itertools.count(1)
        self._subscribers: set[trio.MemorySendChannel[Entry]] = set()

    def record(self, t: Transition) -> None:
        # Transitions carry trio's clock; people read wall-clock time.
        wall = time.time() - (trio.current_time() - t.at)
        entry: Entry = {
            "seq": next(self._seq),
            "machine": t.machine,
            "subject": t.subject,
            "source": t.source,
            "target": t.target,
            "event": t.event,
            "cause": t.cause,
            "at": round(wall, 6),
        }
        self.entries.append(entry)
        self.last_by_subject[t.subject] = entry
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(entry)
            except trio.WouldBlock:
                self._subscribers.discard(channel)
                channel.close()

    def close_subscribers(self) -> None:
        """End every live stream (shutting down): their readers see the end of the channel."""
        for channel in self._subscribers:
            channel.close()
        self._subscribers.clear()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[tuple[list[Entry], trio.MemoryReceiveChannel[Entry]]]:
        """The history so far, and a channel of what comes after it (no gap, no overlap)."""
        send, receive = trio.open_memory_channel[Entry](SUBSCRIBER_BACKLOG)
        self._subscribers.add(send)
        try:
            yield list(self.entries), receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()
