"""What every source shares: decoding a message into an event or a dead letter.

``SourceItem`` is what a source emits: a ``Sequenced`` event or the ``DeadLetter`` of a
message that is not processed (its raw payload, its origin and the reason).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows.items import Sequenced
from schemas.events import Event, InvalidEvent, parse_event
from schemas.outputs import DEAD_LETTER_MAX_PAYLOAD, DeadLetter

log = logging.getLogger(__name__)

SourceItem = Sequenced | DeadLetter


def decode(raw: bytes, origin: dict[str, Any], max_payload_bytes: int = DEAD_LETTER_MAX_PAYLOAD) -> Event | DeadLetter:
    """The event in ``raw``, or a dead letter (keeping at most ``max_payload_bytes`` of it)
    saying why there is none."""
    try:
        return parse_event(raw)
    except InvalidEvent as exc:
        return refuse(raw, str(exc), origin, max_payload_bytes)
    except Exception as exc:  # a parser bug is still this message's problem, never the engine's
        log.exception("could not parse a message from %s", origin, extra={"step": "events_in"})
        return refuse(raw, f"could not be parsed: {type(exc).__name__}: {exc}", origin, max_payload_bytes)


def refuse(raw: bytes, reason: str, origin: dict[str, Any],
           max_payload_bytes: int = DEAD_LETTER_MAX_PAYLOAD) -> DeadLetter:
    """The dead letter of a message that is not processed."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("dead letter from %s: %s", origin, reason, extra={"step": "events_in", "reason": reason})
    return DeadLetter.of(raw, reason, origin, max_payload_bytes)


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered (from 1) non-blank lines of a JSONL file, gzip-compressed if it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line
