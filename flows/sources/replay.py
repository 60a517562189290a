"""A recorded JSONL file (optionally gzip-compressed) as a source, in event-time order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engine.admission import InputBounds, admit_recording
from flows.items import Sequenced
from flows.sources.common import SourceItem, decode, read_lines, refuse
from schemas.events import Event
from schemas.outputs import DeadLetter


@dataclass(frozen=True)
class ReplayInput:
    """A recorded stream, validated and in event-time order, with its watermark."""

    events: list[Event]
    dead_letters: list[DeadLetter]
    watermark: float | None  # event time of the last event in the whole stream


def load_replay(path: Path, bounds: InputBounds | None = None) -> ReplayInput:
    """Read and validate ``path``, admit its valid events within ``bounds``
    (``engine.admission.admit_recording``), and order them by event time (ties keep file
    order). Dead letters come in file order."""
    bounds = bounds or InputBounds()
    limit = bounds.dead_letter_max_payload_bytes
    numbers: list[int] = []
    valid: list[Event] = []
    dead: list[tuple[int, DeadLetter]] = []
    name = str(path)
    for number, raw in read_lines(path):
        result = decode(raw, {"file": name, "line": number}, limit)
        if isinstance(result, DeadLetter):
            dead.append((number, result))
        else:
            numbers.append(number)
            valid.append(result)
    problems, order = admit_recording(valid, bounds)
    refused = {numbers[i]: problem for i, problem in enumerate(problems) if problem is not None}
    if refused:  # few, if any: their payloads are read again, as received
        dead.extend((number, refuse(raw, refused[number], {"file": name, "line": number}, limit))
                    for number, raw in read_lines(path) if number in refused)
        dead.sort(key=lambda item: item[0])
    events = [valid[i] for i in order]
    return ReplayInput(events, [d for _, d in dead], events[-1].t if events else None)


class _ListPartition(StatefulSourcePartition[SourceItem, int]):
    """``items`` in batches; no batch spans ``boundary`` (so the events' batches are the same
    whatever the number of dead letters before them, and so is the order of the outputs)."""

    def __init__(self, items: list[SourceItem], start: int, batch_size: int, boundary: int = 0) -> None:
        self._items, self._next, self._batch, self._boundary = items, start, batch_size, boundary

    def next_batch(self) -> list[SourceItem]:
        if self._next >= len(self._items):
            raise StopIteration
        end = self._next + self._batch
        if self._next < self._boundary < end:
            end = self._boundary
        batch = self._items[self._next:end]
        self._next += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._next


class ReplaySource(FixedPartitionedSource[SourceItem, int]):
    """One partition: the dead letters first, then the events in event-time order."""

    PART = "replay"
    BATCH_SIZE = 500

    def __init__(self, replay: ReplayInput, batch_size: int = BATCH_SIZE) -> None:
        self._replay, self._batch_size = replay, batch_size

    def list_parts(self) -> list[str]:
        return [self.PART]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ListPartition:
        items: list[SourceItem] = list(self._replay.dead_letters)
        items.extend(Sequenced(self.PART, seq, event) for seq, event in enumerate(self._replay.events))
        return _ListPartition(items, resume_state or 0, self._batch_size, len(self._replay.dead_letters))
