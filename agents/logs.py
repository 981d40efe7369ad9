"""The worker's log stays readable during outages: repeats of a client library's message are held back.

aiokafka logs every failed connection and metadata refresh (hundreds of lines a second while a
broker is away). :class:`RepeatFilter` lets the first line of each message template through, holds
back its repeats for ``window`` seconds, then lets one through that says how many it held back.
MASB's own loggers (``masb.*``) are not filtered: they already log once per state change plus a
periodic summary. A record of the Kafka client or of aiohttp's server is made one line: its
traceback (aiokafka's connection errors; aiohttp's parse errors, whose text quotes the request's
bytes) becomes the exception's class name.
"""

from __future__ import annotations

import asyncio
import logging
import time

FILTERED_PREFIXES = ("aiokafka", "kafka", "faust", "mode", "aiohttp.server")
ONE_LINE_PREFIXES = ("aiokafka", "kafka", "aiohttp.server")


class RepeatFilter(logging.Filter):
    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, object], list] = {}  # (logger, template) -> [window start, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(FILTERED_PREFIXES) or record.levelno >= logging.CRITICAL:
            return True
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            # faust reports an agent cancelled for a rebalance as a crash, with a traceback: it is
            # expected (the agent restarts and its batch is read again), so one line says it.
            record.exc_info, record.exc_text = None, None
        key = (record.name, record.msg)  # the template: its arguments (hosts, ids) vary between repeats
        if record.name.startswith(ONE_LINE_PREFIXES):
            _one_line(record)
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        held = seen[1] if seen is not None else 0
        self._seen[key] = [now, 0]
        if held:
            record.msg = f"{record.msg} [and {held} more like it in the last {self.window:.0f}s]"
        return True


def _one_line(record: logging.LogRecord) -> None:
    """The record as one line; an exception only by its class name (its text may quote request bytes)."""
    if record.exc_info and record.exc_info[1] is not None:
        error = type(record.exc_info[1]).__name__
        record.msg, record.args = f"{record.getMessage()} ({error})", None
        record.exc_info, record.exc_text = None, None
    message = record.getMessage()
    if "\n" in message:
        record.msg, record.args = " ".join(message.split()), None


def install_repeat_filter(logger: logging.Logger, window: float = 60.0) -> None:
    """Filter every handler of ``logger`` (the root logger, once the worker configured it)."""
    repeat = RepeatFilter(window)
    for handler in logger.handlers:
        handler.addFilter(repeat)
