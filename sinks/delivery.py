"""Back-pressure for sinks whose transport can be down: a bounded buffer, a delivery thread,
retries with exponential backoff and full jitter, and a dead letter for what cannot be
delivered.

``BufferedSink`` is the base of the Redis and webhook sinks. ``write_batch`` never blocks
the dataflow: it appends to a bounded in-memory buffer and returns. A background thread
delivers the buffer in order, in batches of at most ``batch_size``; a failed batch is
retried after ``policy.delay(attempt)`` until it succeeds or its retry budget
(``policy.budget_s``) is spent, and then goes to the dead letter with the reason. What
arrives while the buffer is full goes straight to the dead letter ("buffer full"): nothing
is dropped silently. A subclass raises ``Undeliverable`` for a permanent refusal of a batch
(an HTTP 400, say), which skips the retries, or returns the records refused one by one (a
Redis key of the wrong type), which go to the dead letter while the rest of the batch counts
as delivered.

Delivery: at least once. ``position()`` (the sink's recovery snapshot) is the list of
records not yet delivered, so a crash loses nothing that was handed to the sink: a
restart re-queues them, and the replay after the snapshot writes the rest again.
Subclasses make every write idempotent by record id.

Counters are plain attributes: ``delivered``, ``retried`` (failed attempts that were
retried), ``failed`` (failed attempts), ``dead_lettered`` and ``buffer_depth``. A
``sinks.base.SinkReport`` attached (``attach_metrics``; ``ops.MeteredSink`` attaches the
Prometheus one) hears of each retry (``crm_engine_sink_retries_total``), each dead-lettered
record (``crm_engine_sink_errors_total``), the buffer (``crm_engine_sink_buffered_records``, of
``crm_engine_sink_buffer_capacity_records``) and, per delivered batch, each record's time from
``write_batch`` to its confirmed delivery (``crm_engine_sink_delivery_latency_seconds``).

A sink's dead letters (``DeadLetterOut``) keep the whole record: the engine's own records
are bounded by construction, and whoever re-sends them needs all of it. Writing them never
raises: what cannot be stored (a read-only or full disk) is logged at CRITICAL level with
each record's id and counted as lost (``lost``; ``crm_engine_sink_lost_total``), and the
dataflow goes on. ``KafkaDeadLetters`` sends what its topic refuses to a file.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from schemas.outputs import DeadLetter
from sinks.base import Record, Sink, SinkReport, Unreported

log = logging.getLogger(__name__)


class Undeliverable(Exception):
    """The destination refused a record for good; retrying cannot help."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff
    And Jitter"): the n-th retry waits a uniform time in [0, min(max_s, base_s * 2**n)].

    >>> policy = RetryPolicy(base_s=0.5, max_s=4.0)
    >>> rng = random.Random(1)
    >>> [round(policy.delay(n, rng), 3) for n in range(5)]
    [0.067, 0.847, 1.528, 1.02, 1.982]
    """

    base_s: float = 0.2
    max_s: float = 10.0
    budget_s: float = 300.0  # a batch still undelivered after this long goes to the dead letter

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_s, self.base_s * 2.0 ** attempt))


class RetryLater(ConnectionError):
    """A transient failure whose receiver said when to try again (HTTP ``Retry-After``):
    the next attempt waits that long (within the retry budget) instead of the backoff."""

    def __init__(self, message: str, after_s: float) -> None:
        super().__init__(message)
        self.after_s = after_s


class DeadLetterOut(Protocol):
    """Where a sink puts what it could not deliver. ``write`` never raises: what it cannot
    store is logged and counted as lost (on the sink's metrics, once attached)."""

    def write(self, letters: list[DeadLetter]) -> None: ...

    def close(self) -> None: ...

    def attach_metrics(self, metrics: SinkReport) -> None: ...


#: The most record ids one log line of lost dead letters names.
LOST_IDS_LOGGED = 20


def _ids_of(letters: list[DeadLetter]) -> str:
    ids = [str(letter.source.get("id", letter.source)) for letter in letters[:LOST_IDS_LOGGED]]
    more = len(letters) - len(ids)
    return ", ".join(ids) + (f" and {more} more" if more else "")


class JsonlDeadLetters:
    """Dead letters appended to a JSONL file (one ``DeadLetter`` per line, flushed).

    If the file cannot be written, the letters are logged (their ids) at CRITICAL level and
    counted as ``lost``; the next write tries the file again, on a new line.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._file: BinaryIO | None = None
        self._metrics: SinkReport = Unreported()
        self._lock = threading.Lock()  # a buffered sink writes from its thread and the dataflow's
        self.lost = 0

    def attach_metrics(self, metrics: SinkReport) -> None:
        self._metrics = metrics

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        lines = b"".join(letter.to_bytes() + b"\n" for letter in letters)
        try:
            with self._lock:
                handle = self._file or self._open()
                handle.write(lines)
                handle.flush()
        except OSError as exc:
            self._drop_handle()
            self.lost += len(letters)
            self._metrics.lost(len(letters))
            log.critical("%d dead letters LOST: cannot write %s: %s; record ids: %s", len(letters),
                         self._path, exc, _ids_of(letters), extra={"reason": letters[0].reason})

    def _open(self) -> BinaryIO:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self._path, "ab")  # noqa: SIM115 (held open until close)
        self._file = handle
        if handle.tell() > 0:  # after a failed write the last line may be cut short: start a new one
            with open(self._path, "rb") as tail:
                tail.seek(-1, 2)
                if tail.read(1) != b"\n":
                    handle.write(b"\n")
        return handle

    def _drop_handle(self) -> None:
        with self._lock:
            handle, self._file = self._file, None
        if handle is not None:
            with contextlib.suppress(OSError):  # what it still buffered is in the letters counted as lost
                handle.close()

    def close(self) -> None:
        with self._lock:
            handle, self._file = self._file, None
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:
                log.critical("dead letters to %s may be LOST: closing the file failed: %s", self._path, exc)


def kafka_refusal(error: object) -> str:
    """Why Kafka took no record, from a ``KafkaError`` (a delivery report), a
    ``KafkaException`` or any other exception ``produce()`` raised: ``NAME: text``."""
    if isinstance(error, BaseException) and error.args and hasattr(error.args[0], "str"):
        error = error.args[0]  # a KafkaException wraps its KafkaError
    name, text = getattr(error, "name", None), getattr(error, "str", None)
    if callable(name) and callable(text):
        return f"{name()}: {text()}"
    return f"{type(error).__name__}: {error}"


class KafkaDeadLetters:
    """Dead letters produced to a Kafka topic (flushed on every write: they are rare).

    A letter the broker refuses (too large, unknown topic, ...), whether ``produce()`` raises
    or its delivery report fails after librdkafka's own retries, goes to ``fallback`` (a
    JSONL file) with the refusal added to its reason.
    """

    def __init__(self, client_config: dict[str, str | int | float | bool], topic: str,
                 fallback: DeadLetterOut) -> None:
        self._config = client_config
        self._topic = topic
        self._fallback = fallback
        self._producer: Any = None
        self._lock = threading.Lock()  # a buffered sink writes from its thread and the dataflow's
        self.refused = 0

    def attach_metrics(self, metrics: SinkReport) -> None:
        self._fallback.attach_metrics(metrics)

    def write(self, letters: list[DeadLetter]) -> None:
        from confluent_kafka import KafkaException, Producer

        with self._lock:
            if self._producer is None:
                self._producer = Producer(self._config)
            producer = self._producer
        for letter in letters:
            while True:
                try:
                    producer.produce(self._topic, letter.to_bytes(), on_delivery=partial(self._on_delivery, letter))
                    break
                except BufferError:  # local queue full: wait for deliveries
                    producer.poll(0.1)
                except (KafkaException, ValueError, TypeError) as exc:
                    self._refused(letter, kafka_refusal(exc))
                    break
        if producer.flush(10):
            log.error("dead letters to %s not acknowledged within 10 s", self._topic)

    def _on_delivery(self, letter: DeadLetter, err: Any, _msg: Any) -> None:
        if err is not None:
            self._refused(letter, kafka_refusal(err))

    def _refused(self, letter: DeadLetter, why: str) -> None:
        self.refused += 1
        log.error("dead letter of %s refused by topic %s, written to the file instead: %s", letter.source.get("id"),
                  self._topic, why, extra={"topic": self._topic, "reason": why})
        self._fallback.write([letter.amended(f"dead-letter topic {self._topic} refused it: {why}")])

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        self._fallback.close()


def record_id(record: Record) -> str:
    """The id a record is de-duplicated by: ``action_id``, ``change_id``, ``alert_id``,
    ``prompt_id``, ``report_id`` or ``event_id``; for a dead letter, where its payload came from.

    >>> record_id(DeadLetter.of(b"x", "invalid JSON", {"topic": "events", "partition": 0, "offset": 7}))
    'dead letter of topic=events/partition=0/offset=7'
    """
    if isinstance(record, DeadLetter):
        return "dead letter of " + "/".join(f"{k}={v}" for k, v in record.source.items())
    for name in ("action_id", "change_id", "alert_id", "prompt_id", "report_id", "event_id"):
        value = getattr(record, name, None)
        if isinstance(value, str):
            return value
    return getattr(record, "customer_id", None) or "-"


class BufferedSink(Sink):
    """A sink delivered by a background thread from a bounded buffer (see the module doc)."""

    reports_delivery = True

    def __init__(self, name: str, dead_letters: DeadLetterOut, capacity: int = 10_000,
                 batch_size: int = 100, policy: RetryPolicy | None = None,
                 rng: random.Random | None = None, close_timeout_s: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.capacity = capacity
        self.batch_size = batch_size
        self.policy = policy or RetryPolicy()
        self.close_timeout_s = close_timeout_s
        self._dead = dead_letters
        self._rng = rng or random.Random(0)
        self._monotonic = monotonic
        self._buffer: deque[Record] = deque()
        self._handed: deque[float] = deque()  # when each buffered record was handed over (monotonic)
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.retried = 0
        self.failed = 0
        self.dead_lettered = 0
        self._metrics: SinkReport = Unreported()

    # -- what a transport implements ---------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Create the transport's client (called in ``open``)."""

    @abstractmethod
    def deliver(self, records: list[Record]) -> list[tuple[Record, str]] | None:
        """Deliver ``records`` idempotently, or raise (``Undeliverable`` if retrying cannot help).
        A transport that can refuse single records for good returns them with the reason:
        they go to the dead letter and the rest of the batch counts as delivered."""

    def disconnect(self) -> None:
        """Release the transport's client."""

    # -- the Sink interface ------------------------------------------------------------------

    @property
    def buffer_depth(self) -> int:
        return len(self._buffer)

    def attach_metrics(self, metrics: SinkReport) -> None:
        self._metrics = metrics
        metrics.buffer_capacity(self.capacity)
        metrics.buffer_depth(len(self._buffer))
        self._dead.attach_metrics(metrics)

    def _report_depth(self) -> None:
        self._metrics.buffer_depth(len(self._buffer))

    def open(self, resume: Any = None) -> None:
        self.connect()
        if isinstance(resume, list):  # handed over again now: latencies count from the restart
            self._buffer.extend(resume)
            self._handed.extend([self._monotonic()] * len(resume))
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def write_batch(self, records: list[Record]) -> None:
        overflow: list[Record] = []
        with self._cond:
            room = self.capacity - len(self._buffer)
            if room < len(records):
                overflow = records[max(room, 0):]
                records = records[:max(room, 0)]
            self._buffer.extend(records)
            self._handed.extend([self._monotonic()] * len(records))
            self._report_depth()
            self._cond.notify()
        if overflow:
            self._dead_letter(overflow, f"{self.name}: delivery buffer full ({self.capacity} records)")

    def position(self) -> list[Record]:
        """The records not yet delivered (re-queued by ``open`` after a restart)."""
        with self._cond:
            return list(self._buffer)

    def close(self) -> None:
        deadline = self._monotonic() + self.close_timeout_s
        with self._cond:
            while self._buffer and self._monotonic() < deadline:
                self._cond.wait(0.05)
        self._closing.set()
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(self.close_timeout_s)
        with self._cond:
            left = list(self._buffer)
            self._buffer.clear()
            self._handed.clear()
        if left:
            self._dead_letter(left, f"{self.name}: undelivered when the sink closed")
        self.disconnect()
        self._dead.close()

    # -- the delivery thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            with self._cond:
                while not self._buffer and not self._closing.is_set():
                    self._cond.wait(0.5)
                batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            if batch:
                self._deliver_with_retries(batch)

    def _deliver_with_retries(self, batch: list[Record]) -> None:
        started, attempt = self._monotonic(), 0
        while True:
            try:
                refused = self.deliver(batch) or []
            except Undeliverable as exc:
                self.failed += 1
                self._done(batch)
                self._dead_letter(batch, f"{self.name}: refused: {exc}")
                return
            except Exception as exc:  # any transport error is retried
                self.failed += 1
                waited = self._monotonic() - started
                if waited >= self.policy.budget_s or self._closing.is_set():
                    if self._closing.is_set():
                        return  # close() dead-letters what is still buffered
                    self._done(batch)
                    self._dead_letter(batch, f"{self.name}: undelivered after {attempt + 1} attempts "
                                             f"in {waited:.1f} s: {exc}")
                    return
                self.retried += 1
                self._metrics.retry()
                if attempt == 0:
                    log.warning("%s: delivery failed, retrying: %s", self.name, exc)
                pause = self.policy.delay(attempt, self._rng)
                if isinstance(exc, RetryLater):
                    pause = min(exc.after_s, max(0.0, self.policy.budget_s - waited))
                self._closing.wait(pause)
                attempt += 1
            else:
                handed = self._done(batch)
                self.delivered += len(batch) - len(refused)
                self._report_latencies(batch, handed, refused)
                if refused:
                    self.failed += 1
                    self._refuse(refused)
                return

    def _refuse(self, refused: list[tuple[Record, str]]) -> None:
        """Dead-letter records refused one by one, one letter call per reason."""
        by_reason: dict[str, list[Record]] = {}
        for record, reason in refused:
            by_reason.setdefault(reason, []).append(record)
        for reason, records in by_reason.items():
            self._dead_letter(records, f"{self.name}: refused: {reason}")

    def _report_latencies(self, batch: list[Record], handed: list[float],
                          refused: list[tuple[Record, str]]) -> None:
        """Each delivered record's time from ``write_batch`` to now, in one report."""
        now = self._monotonic()
        if refused:
            gone = {id(record) for record, _ in refused}
            latencies = [now - t for record, t in zip(batch, handed, strict=True) if id(record) not in gone]
        else:
            latencies = [now - t for t in handed]
        if latencies:
            self._metrics.delivered(latencies)

    def _done(self, batch: list[Record]) -> list[float]:
        """Take ``batch`` off the buffer; when each of its records was handed over."""
        with self._cond:
            for _ in batch:
                self._buffer.popleft()
            handed = [self._handed.popleft() for _ in batch]
            self._report_depth()
            self._cond.notify_all()
        return handed

    def _dead_letter(self, records: list[Record], reason: str) -> None:
        self.dead_lettered += len(records)
        self._metrics.error(len(records))
        log.error("%s (%d records to the dead letter)", reason, len(records))
        self._dead.write([DeadLetter.of(r.to_bytes(), reason, {"sink": self.name, "id": record_id(r)},
                                        max_payload_bytes=None) for r in records])
