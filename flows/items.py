"""The items that travel between the dataflow's steps (internal; not a wire format)."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import Event


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Sequenced:
    """A valid event and its place in its source partition.

    ``seq`` counts the valid events of partition ``part`` from 0 without gaps (a position
    the sources resume from).
    """

    part: str
    seq: int
    event: Event
    # Wall-clock seconds when the event entered the pipeline: the Kafka message timestamp
    # (CreateTime or LogAppendTime), or when Redis added the stream entry (its id), in live
    # mode; None in replay. Latency metrics start here.
    source_time: float | None = None
    # Wall-clock seconds when the engine read it from the broker (None in replay): the
    # engine's own share of the latency starts here.
    read_at: float | None = None
