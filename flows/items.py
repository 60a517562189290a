"""The items that travel between the dataflow's steps (internal; not a wire format)."""

from __future__ import annotations

from dataclasses import dataclass

from detectors.customer import Observation
from detectors.fraud import Assessment
from schemas.events import Event
from schemas.outputs import Alert


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Sequenced:
    """A valid event and its place in its source partition.

    ``seq`` counts the valid events of partition ``part`` from 0 without gaps; the shared
    scoring step uses it to process events in source order whatever the worker count.
    """

    part: str
    seq: int
    event: Event


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Observed:
    """An event after the per-customer step."""

    part: str
    seq: int
    event: Event
    observation: Observation


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Scored:
    """An event after the shared scoring step; transactions carry their assessment."""

    event: Event
    observation: Observation
    assessment: Assessment | None
    alert: Alert | None
