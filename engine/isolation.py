"""Fault isolation: an exception in the per-event logic is that event's problem, never the engine's.

Every keyed step catches what its per-event logic raises for one event, and ``Failures``
turns it into a ``DeadLetter`` naming the step, the error and the event; the step goes on
with the next event. The event is not processed further; what the step had already changed
for it stays (the models never see a half-built feature vector: they learn only after a
score).

Logging is bounded so that a stream of failing events cannot flood the log: the first
``LOG_FIRST`` failures of a step are logged with their traceback, then one in ``LOG_EVERY``.

>>> from schemas.events import parse_event
>>> event = parse_event(b'{"kind":"app","event_id":"e1","customer_id":"c1","ts":"2026-01-01T00:00:00Z",'
...                     b'"action":"login"}')
>>> failures = Failures(log_first=0)
>>> letter = failures.record("customer_profile", event, ZeroDivisionError("float division by zero"),
...                          {"part": "replay", "seq": 7})
>>> letter.reason
'step customer_profile failed on event e1: ZeroDivisionError: float division by zero'
>>> letter.source
{'part': 'replay', 'seq': 7, 'step': 'customer_profile', 'event_id': 'e1'}
>>> failures.counts
{'customer_profile': 1}
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

import orjson

from schemas.events import Event
from schemas.outputs import DeadLetter

log = logging.getLogger(__name__)
LOG_FIRST: Final = 10
LOG_EVERY: Final = 1000
#: A failure's reason is cut to this many characters (an exception's text can be anything).
REASON_MAX: Final = 500


class Failures:
    """Turns per-event exceptions into dead letters; counts them per step (one per run,
    shared by every key and worker thread of the process)."""

    def __init__(self, log_first: int = LOG_FIRST, log_every: int = LOG_EVERY) -> None:
        self._log_first, self._log_every = log_first, log_every
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def record(self, step: str, event: Event, exc: BaseException, origin: dict[str, Any]) -> DeadLetter:
        """The dead letter of ``event``, on which ``step`` raised ``exc``; its payload is the
        event as the engine had parsed it (canonical JSON), ``origin`` where it came from."""
        reason = f"step {step} failed on event {event.event_id}: {type(exc).__name__}: {exc}"[:REASON_MAX]
        with self._lock:
            n = self.counts[step] = self.counts.get(step, 0) + 1
        if n <= self._log_first or n % self._log_every == 0:
            log.error("%s (failure %d of this step; the event is dead-lettered)", reason, n,
                      exc_info=exc, extra={"step": step})
        return DeadLetter.of(orjson.dumps(event), reason, {**origin, "step": step, "event_id": event.event_id})
