"""Logging: plain text or one JSON object per line, and a filter that masks personal numbers.

``configure_logging(level, fmt)`` sets up the root logger once (``run.py``). JSON lines carry
``ts``, ``level``, ``logger``, ``message``, the thread, and ``step`` / ``event_id`` /
``alert_id`` / ``sink`` / ``topic`` / ``partition`` / ``reason`` when the call passed them in
``extra``. Whatever the format, ``MaskingFilter`` rewrites every record before it is written
so that no full card number (PAN, 13-19 digits, optionally grouped by spaces or dashes),
mainland-China mobile number or 18-character resident ID number gets through.

>>> mask("card 6222 0212 3456 7890 123, phone 138-1234-5678, id 11010519491231002X")
'card ***************0123, phone 138****5678, id **************002X'
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

import orjson

# An 18-character resident ID: region (6), birth date (8), sequence (3), check digit or X.
_RESIDENT_ID: Final = re.compile(r"(?<![0-9A-Za-z])\d{6}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])"
                                 r"(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])")
# 13-19 digits, optionally grouped by single spaces or dashes (card numbers are printed so).
_PAN: Final = re.compile(r"(?<![0-9])\d(?:[ -]?\d){12,18}(?![0-9])")
# A mainland-China mobile number: 1[3-9] and 9 more digits, optionally as 3-4-4 groups.
_MOBILE: Final = re.compile(r"(?<![0-9])(1[3-9]\d)[ -]?(\d{4})[ -]?(\d{4})(?![0-9])")

EXTRA_FIELDS: Final = ("step", "event_id", "alert_id", "sink", "topic", "partition", "reason")


def _mask_digits(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "*" * (len(digits) - 4) + digits[-4:]


def mask(text: str) -> str:
    """``text`` with card numbers, resident IDs (last 4 kept) and mobile numbers (3+4 kept)
    masked."""
    if not any(c.isdigit() for c in text):
        return text
    text = _RESIDENT_ID.sub(_mask_digits, text)
    text = _PAN.sub(_mask_digits, text)
    return _MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)


class MaskingFilter(logging.Filter):
    """Masks the message, its arguments, the exception text and string extras of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, mask(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "thread": record.threadName,
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records, masked, to ``stream`` (stderr) as ``text`` or ``json``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
