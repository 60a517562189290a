"""The items that travel between the dataflow's steps (internal; not a wire format)."""

from __future__ import annotations

from dataclasses import dataclass

from detectors.churn import ChurnEvidence, Rhythm
from detectors.customer import Observation
from detectors.fraud import Assessment
from schemas.events import Event
from schemas.outputs import Alert, DeadLetter, Prompt


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Sequenced:
    """A valid event and its place in its source partition.

    ``seq`` counts the valid events of partition ``part`` from 0 without gaps; the shared
    scoring step uses it to process events in source order whatever the worker count.
    """

    part: str
    seq: int
    event: Event
    # Wall-clock seconds when the event entered the pipeline: the Kafka message timestamp
    # (CreateTime or LogAppendTime) in live mode; None in replay. Latency metrics start here.
    source_time: float | None = None
    # Wall-clock seconds when the engine read it from the broker (None in replay): the
    # engine's own share of the latency starts here.
    read_at: float | None = None


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Observed:
    """An event after the per-customer step."""

    part: str
    seq: int
    event: Event
    observation: Observation
    source_time: float | None = None
    read_at: float | None = None


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class Scored:
    """An event after the shared scoring step; transactions carry their assessment."""

    event: Event
    observation: Observation
    assessment: Assessment | None
    alert: Alert | None
    source_time: float | None = None
    # For a fraud/legit feedback that matched a scored transaction: the fraud_score that
    # transaction had, and whether the label says fraud (online model health).
    label_outcome: tuple[float, bool] | None = None
    read_at: float | None = None
    prompt: Prompt | None = None  # a next-best-action prompt this event triggered
    churn: float | None = None  # the churn score, when the event counted for churn


@dataclass(slots=True)
class AsOf:
    """The end of a replay, for one customer: their churn evidence as of the stream's last
    event time (from the per-customer step's EOF), then the score the shared model gives it
    (filled in by the shared step), for the customer-state output."""

    customer_id: str
    evidence: ChurnEvidence
    rhythm: Rhythm | None = None  # for fitting the population priors (None: no activity)
    churn: float | None = None


@dataclass(slots=True)
class Failed:
    """An event whose processing raised in a step (``engine.isolation``): its place in its
    source partition (the shared step still counts it, so the events after it are not held
    back) and its dead letter, which travels on to the dead-letter outputs."""

    part: str
    seq: int
    customer_id: str
    dead_letter: DeadLetter
