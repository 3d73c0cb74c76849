"""Log events: one JSON object per line on stderr, or readable text with `-v`.

Every record has an `event` field; the llmux 2.4 events (switch_started, model_activated,
switch_failed, sleep_hook_failed, request_timeout, hook_completed, hook_failed) keep their
names so existing log pipelines keep working.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any, TextIO

import msgspec

LOGGER_NAME = "llmux"
logger = logging.getLogger(LOGGER_NAME)


def log_event(
    event: str,
    message: str,
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
    **fields: object,
) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, message, exc_info=exc_info, extra={"event": event, "fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per record. msgspec, not json: with a line per request (the request
    log), the formatter is on the hot path."""

    _encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encoder.encode(entry).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{key}={value}" for key, value in fields.items())
        event = getattr(record, "event", "log")
        line = f"{_iso(record.created)} {record.levelname:<7} {event:<18} {record.getMessage()}"
        if extra:
            line = f"{line}  [{extra}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure(*, verbose: bool, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(TextFormatter() if verbose else JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _iso(created: float) -> str:
    return f"{_iso_second(int(created))}.{int(created % 1 * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    # Records come many to a second: format each second once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
