"""The engine's one dataflow, for every mode; sources and sinks come from the caller.

    source ──► split_dead_letters ──► DeadLetter (bad input) ───────────────► sinks
                      ├─────────────────► event_summaries (if an events sink) ─► sinks
                      │ Sequenced (valid events, seq per source partition)
                      ▼ key: customer_id
               customer_profile      per customer: profile features, rule hits,
                      │ Observed     churn evidence
                      ▼ key: "shared"
               shared_scoring        re-sequenced; counterparty risk, anomaly and
                      │ Scored       supervised models; fraud_score, alert; churn model
                      │              (learns from churn labels): churn_score; the
                      │              next-best-action bandit and contact rules: prompt
                      ▼ key: customer_id
               customer_view         fraud risk, open alerts, churn alerts; customer
                                     state at the end of a replay
                      │ Alert | Prompt | Score | CustomerState
                      ▼
                   sinks

An event whose processing raises in a keyed step becomes a ``Failed`` item there
(``engine.isolation``): it keeps its place in the shared step's order and its dead letter
travels on to the end of the flow, where it joins the bad input on the dead-letter sinks.

Step ids are stable: recovery state is keyed by them. With metrics (``ops.metrics``), two
stateless steps observe the stream (``observe_input`` after the source, ``observe_scored``
after shared scoring) and each keyed step's logic is timed; without, none of it is wired.
Likewise ``event_summaries`` (each valid event's ``EventSummary``, for the dashboard's
timelines) exists only when ``Outputs.events`` has a sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from flows import observing
from flows.items import AsOf, Failed, Scored, Sequenced
from flows.steps import CustomerStep, CustomerViewStep, Output, SharedScoringStep, StepConfig
from flows.timing import TimedLogic
from schemas.outputs import Alert, CustomerState, DeadLetter, EventSummary, LifecycleChange, Prompt, Score

if TYPE_CHECKING:
    from ops.metrics import EngineMetrics

SHARED_KEY = "shared"


@dataclass
class Outputs:
    """Bytewax sinks by record kind, each under a stable name (part of its step id)."""

    alerts: dict[str, Sink[Any]] = field(default_factory=dict)
    scores: dict[str, Sink[Any]] = field(default_factory=dict)
    states: dict[str, Sink[Any]] = field(default_factory=dict)
    dead_letters: dict[str, Sink[Any]] = field(default_factory=dict)
    audit: dict[str, Sink[Any]] = field(default_factory=dict)  # alerts and lifecycle changes
    prompts: dict[str, Sink[Any]] = field(default_factory=dict)  # next-best-action prompts
    events: dict[str, Sink[Any]] = field(default_factory=dict)  # summaries of valid input events


def _record_key(record: Any) -> str:
    return getattr(record, "customer_id", None) or "-"


def _write(kind: str, stream: Stream[Any], sinks: dict[str, Sink[Any]]) -> None:
    for name, sink in sinks.items():
        step = f"out_{kind}_{name}"
        if isinstance(sink, FixedPartitionedSink):
            op.output(step, op.key_on(f"key_{kind}_{name}", stream, _record_key), sink)
        else:
            op.output(step, stream, sink)


def build_flow(source: Source[Any], outputs: Outputs, config: StepConfig,
               name: str = "crm_engine", metrics: EngineMetrics | None = None,
               side_input: Source[Any] | None = None) -> Dataflow:
    """Wire source -> per-customer -> shared scoring -> per-customer view -> sinks.

    ``side_input`` (live modes: the Redis input stream the dashboard's feedback arrives on)
    is merged with the source; its partitions sequence their events on their own."""
    flow = Dataflow(name)
    received = op.input("events_in", flow, source)
    if side_input is not None:
        received = op.merge("events_merged", received, op.input("side_in", flow, side_input))
    if metrics is not None:
        received = op.flat_map_batch("observe_input", received, observing.observe_input(metrics))
    # Sequenced | DeadLetter
    split = op.branch("split_dead_letters", received, lambda item: isinstance(item, Sequenced))
    # DeadLetter (bad input)
    if outputs.events:
        _write("events", op.filter_map("event_summaries", split.trues, _summary), outputs.events)
        # EventSummary (transactions, app events and feedback; not profiles or controls)
    by_customer = op.key_on("key_customer", split.trues, lambda s: s.event.customer_id)
    # (customer_id, Sequenced)
    observed = op.stateful_batch("customer_profile", by_customer, _customer_step(config, metrics))
    # (customer_id, Observed | AsOf: the churn evidence as of the end of a replay
    #  | Failed: an event whose processing raised, with its dead letter)
    shared = op.key_on("key_shared", op.map("drop_customer_key", observed, _value),
                       lambda _: SHARED_KEY)
    # ("shared", Observed | AsOf | Failed)
    scored = op.stateful_batch("shared_scoring", shared, _timed(
        "shared_scoring", lambda resume: SharedScoringStep(config, resume), metrics))
    # ("shared", Scored | AsOf | Failed)
    if metrics is not None:
        scored = op.flat_map_batch("observe_scored", scored, observing.observe_scored(metrics))
    rekeyed = op.key_on("key_customer_again", op.map("drop_shared_key", scored, _value), _customer_of)
    # (customer_id, Scored | AsOf | Failed)
    viewed = op.stateful_batch("customer_view", rekeyed, _timed(
        "customer_view", lambda resume: CustomerViewStep(config, resume), metrics))
    # (customer_id, Alert | Prompt | Score | CustomerState | LifecycleChange | DeadLetter)
    records = op.map("drop_view_key", viewed, _value)
    # Alert | Prompt | Score | CustomerState | LifecycleChange | DeadLetter (an event that failed in a step)
    failed = op.filter("step_failures", records, _is(DeadLetter))
    if metrics is not None:
        failed = op.flat_map_batch("observe_failures", failed, metrics.observe_failures)
    _write("dead_letters", op.merge("dead_letters", split.falses, failed), outputs.dead_letters)
    # DeadLetter: bad input, and events that failed in a step
    alerts = op.filter("alerts", records, _is(Alert))
    if metrics is not None:  # the alerts users get, after de-duplication and grouping
        alerts = op.flat_map_batch("observe_alerts", alerts, metrics.observe_alerts)
    _write("alerts", alerts, outputs.alerts)
    _write("prompts", op.filter("prompts", records, _is(Prompt)), outputs.prompts)
    _write("scores", op.filter("scores", records, _is(Score)), outputs.scores)
    _write("states", op.filter("states", records, _is(CustomerState)), outputs.states)
    if outputs.audit:
        _write("audit", op.filter("audited", records, _is_audited), outputs.audit)
    return flow


def _customer_step(config: StepConfig, metrics: EngineMetrics | None) -> Any:
    """Builds a customer's profile logic; with metrics, timed and counted as a tracked customer."""
    if metrics is None:
        return lambda resume: CustomerStep(config, resume)

    def build(resume: bytes | None) -> Any:
        metrics.customer_built()
        return TimedLogic(CustomerStep(config, resume), metrics.step_timer("customer_profile"))
    return build


def _timed(step: str, builder: Any, metrics: EngineMetrics | None) -> Any:
    if metrics is None:
        return builder
    return lambda resume: TimedLogic(builder(resume), metrics.step_timer(step))


def _customer_of(item: Scored | AsOf | Failed) -> str:
    return item.event.customer_id if type(item) is Scored else item.customer_id  # type: ignore[union-attr]


def _summary(item: Sequenced) -> EventSummary | None:
    return EventSummary.of(item.event)


def _value(pair: tuple[str, Any]) -> Any:
    return pair[1]


def _is_audited(item: Any) -> bool:
    return isinstance(item, Alert | LifecycleChange)


def _is(cls: type) -> Any:
    def check(item: Output | DeadLetter) -> bool:
        return isinstance(item, cls)
    return check


__all__ = ["Outputs", "StepConfig", "build_flow"]
