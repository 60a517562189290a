"""The engine's one dataflow, for every mode; sources and sinks come from the caller.

    source ──► split_dead_letters ──► DeadLetter (bad input) ───────────────► sinks
                      ├─────────────────► event_summaries (if an events sink) ─► sinks
                      │ Sequenced (valid events, in source order)
                      ▼ key: the customer's shard
                    engine           engine.shard.Shard: per customer the profile, rules,
                      │              churn evidence, view and alert lifecycle; shared by
                      │              the shard's customers the fraud models, the churn
                      │              model and the next-best-action policy
                      │ Alert | Prompt | Score | CustomerState | LifecycleChange
                      │ | ModelReport | ModelChange | DeadLetter
                      ▼
                   sinks (by record kind; dead letters: bad input and failed events;
                          the audit trail: alerts, lifecycle and champion changes)

The per-event logic is ``engine.shard.Shard``, plain Python; the one keyed step here only
hands it each batch of its shard's events (``flows.steps.EngineStep``). An event whose
processing raises becomes a dead letter there (``engine.isolation``), and joins the bad input
on the dead-letter sinks.

Step ids are stable: recovery state is keyed by them. With metrics (``ops.metrics``), the
source's batches are counted (``observe_input``), the engine reports its stage times, scores,
labels and state snapshots to the metrics, its prompts and the alerts its lifecycle suppressed
are counted (``observe_records``), and the alerts leaving it too (``observe_alerts``); without,
none of it is wired. Likewise ``event_summaries`` (each valid event's ``EventSummary``, for
the dashboard's timelines) exists only when ``Outputs.events`` has a sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from engine.config import EngineConfig
from engine.shard import Record
from flows import observing
from flows.items import Sequenced
from flows.steps import EngineStep
from schemas.outputs import (
    Alert,
    CustomerState,
    DeadLetter,
    EventSummary,
    LifecycleChange,
    ModelChange,
    ModelReport,
    Prompt,
    Score,
)

if TYPE_CHECKING:
    from ops.metrics import EngineMetrics

SHARD_KEY = "shard-0"


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
    models: dict[str, Sink[Any]] = field(default_factory=dict)  # fraud model reports and champion changes


def _record_key(record: Any) -> str:
    return getattr(record, "customer_id", None) or "-"


def _write(kind: str, stream: Stream[Any], sinks: dict[str, Sink[Any]]) -> None:
    for name, sink in sinks.items():
        step = f"out_{kind}_{name}"
        if isinstance(sink, FixedPartitionedSink):
            op.output(step, op.key_on(f"key_{kind}_{name}", stream, _record_key), sink)
        else:
            op.output(step, stream, sink)


def build_flow(source: Source[Any], outputs: Outputs, config: EngineConfig,
               name: str = "crm_engine", metrics: EngineMetrics | None = None,
               side_input: Source[Any] | None = None, snapshots: bool = False) -> Dataflow:
    """Wire source -> engine (one key per shard) -> sinks.

    ``side_input`` (live modes: the Redis input stream the dashboard's feedback arrives on)
    is merged with the source. ``snapshots``: recovery is on, so the engine's state is
    snapshotted at every epoch."""
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
    by_shard = op.key_on("key_shard", split.trues, _shard_of)
    # (shard key, Sequenced)
    processed = op.stateful_batch("engine", by_shard,
                                  lambda resume: EngineStep(config, resume, snapshots, metrics))
    # (shard key, Alert | Prompt | Score | CustomerState | LifecycleChange | DeadLetter)
    records = op.map("drop_shard_key", processed, _value)
    if metrics is not None:  # prompts by action and trigger, alerts the lifecycle suppressed
        records = op.flat_map_batch("observe_records", records, metrics.observe_records)
    failed = op.filter("step_failures", records, _is(DeadLetter))
    if metrics is not None:
        failed = op.flat_map_batch("observe_failures", failed, metrics.observe_failures)
    _write("dead_letters", op.merge("dead_letters", split.falses, failed), outputs.dead_letters)
    # DeadLetter: bad input, and events that failed in the engine
    alerts = op.filter("alerts", records, _is(Alert))
    if metrics is not None:  # the alerts users get, after de-duplication and grouping
        alerts = op.flat_map_batch("observe_alerts", alerts, metrics.observe_alerts)
    _write("alerts", alerts, outputs.alerts)
    _write("prompts", op.filter("prompts", records, _is(Prompt)), outputs.prompts)
    _write("scores", op.filter("scores", records, _is(Score)), outputs.scores)
    _write("states", op.filter("states", records, _is(CustomerState)), outputs.states)
    models = op.filter("models", records, _is(ModelReport | ModelChange))
    if metrics is not None:  # each model's prequential figures and the champion
        models = op.flat_map_batch("observe_models", models, metrics.observe_models)
    _write("models", models, outputs.models)
    if outputs.audit:
        _write("audit", op.filter("audited", records, _is_audited), outputs.audit)
    return flow


def _shard_of(item: Sequenced) -> str:
    """The key of the shard an event's customer belongs to (one shard for now)."""
    return SHARD_KEY


def _summary(item: Sequenced) -> EventSummary | None:
    return EventSummary.of(item.event)


def _value(pair: tuple[str, Any]) -> Any:
    return pair[1]


def _is_audited(item: Any) -> bool:
    return isinstance(item, Alert | LifecycleChange | ModelChange)


def _is(cls: Any) -> Any:
    def check(item: Record) -> bool:
        return isinstance(item, cls)
    return check


__all__ = ["Outputs", "build_flow"]
