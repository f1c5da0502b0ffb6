"""Logging: the request id on every line, text or JSON lines, and repeated failures counted.

- `request_id` (a contextvar) is set by `web.middleware.RequestContext` for the time of a
  request; `RequestIdFilter` copies it onto each record (`-` outside a request).
- `RepeatFilter` writes a WARNING-or-worse record once per (logger, message template) and
  interval, counts the repeats, and writes `… repeated N times in the last 10 s` when the
  interval is over: an outage of the database is a few lines, not one per request. A record
  with an exception is also keyed by the exception's type and where it was raised, so two
  different bugs behind one message ("unhandled error") each keep their traceback.
- `logging_config(settings)` is the `dictConfig` that `taskapi` applies, and hands to uvicorn
  so that every worker logs the same way. Nothing here is configured on import.

What reaches a log line is chosen where it is logged: the token, the secret and task text are
never passed to a logger (tests/test_operations.py captures every record to hold that).
"""

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from backend.config import Settings

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

REPEAT_INTERVAL_SECONDS = 10.0
# The fields of the access line (and any other `extra=`) that the JSON format writes.
EXTRA_FIELDS = ("method", "route", "status", "duration_ms")
QUIET_LIBRARIES = ("sqlalchemy", "aiosqlite", "asyncpg", "httpx", "httpx2", "httpcore", "mcp")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


@dataclass
class _Window:
    started: float
    repeats: int = 0


class RepeatFilter(logging.Filter):
    """Lets the first WARNING+ record of each (logger, template) through, swallows the same
    ones for `interval` seconds while counting them, and then writes a summary through `sink`
    (the handler it filters for): on the next record of any kind once the interval is over."""

    def __init__(
        self,
        sink: logging.Handler | None = None,
        *,
        interval: float = REPEAT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.sink = sink
        self.interval = interval
        self.clock = clock
        # Keys are made of code (loggers, templates, exception types and raising lines): a set
        # the program bounds, whatever requests send.
        self._windows: dict[tuple[str, ...], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeat_summary", False):
            return True
        now = self.clock()
        self._flush(now)
        if record.levelno < logging.WARNING:
            return True
        key = _key(record)
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(started=now)
            return True
        window.repeats += 1
        return False

    def _flush(self, now: float) -> None:
        over = [key for key, w in self._windows.items() if now - w.started >= self.interval]
        for key in over:
            window = self._windows.pop(key)
            if window.repeats and self.sink is not None:
                self.sink.handle(self._summary(key, window.repeats))

    def _summary(self, key: tuple[str, ...], repeats: int) -> logging.LogRecord:
        name, template = key[:2]
        record = logging.LogRecord(
            name,
            logging.WARNING,
            __file__,
            0,
            "%s … repeated %d times in the last %g s",
            (template, repeats, self.interval),
            None,
        )
        record.repeat_summary = True
        record.request_id = None
        return record


def _key(record: logging.LogRecord) -> tuple[str, ...]:
    key = (record.name, str(record.msg))
    error = record.exc_info[1] if record.exc_info else None
    if error is None:
        return key
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    where = "" if trace is None else f"{trace.tb_frame.f_code.co_filename}:{trace.tb_lineno}"
    return (*key, type(error).__qualname__, where)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is None:
            return line
        first, newline, rest = line.partition("\n")  # a traceback follows the first line
        return f"{first} request_id={rid}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            entry["request_id"] = rid
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def stream_handler(log_format: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """The one handler `taskapi` logs through (stderr; the tests' `stream`): request ids on,
    repeats counted."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RepeatFilter(handler))
    return handler


def logging_config(settings: Settings) -> dict[str, Any]:
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "default": {"()": "backend.logs.stream_handler", "log_format": settings.log_format}
        },
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {
            # uvicorn's own lines go through the same handler; its access log is replaced by
            # ours (backend.access), which names the route template, not the raw path.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level, "handlers": [], "propagate": False},
            # Even with LOG_LEVEL=DEBUG: at DEBUG the database drivers write statement
            # parameters and result rows (task text), which must not reach a log; httpx's INFO
            # lines (one per JWKS fetch) would be noise.
            **{name: {"level": "WARNING"} for name in QUIET_LIBRARIES},
        },
    }
