"""The metric hooks' side of the dataflow: plain facts from the items between its steps.

``ops.metrics.EngineMetrics`` observes per-event facts (kinds, source partitions, fraud
scores, timestamps) and output records (alerts, dead letters), never the dataflow's items
(``flows.items``). Each function here makes the batch function of an observing step for
``op.flat_map_batch`` where the stream carries items: it extracts the facts of a batch, hands
them to the metrics once, and passes the batch on unchanged. (Where the stream carries
records, the metrics' own hooks take them: ``observe_failures``, ``observe_alerts``.)
``flows.dataflow.build_flow`` wires them only with metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flows.items import Scored, Sequenced
from schemas.outputs import DeadLetter

if TYPE_CHECKING:
    from ops.metrics import EngineMetrics

Batch = Callable[[list[Any]], list[Any]]


def observe_input(metrics: EngineMetrics) -> Callable[[list[Sequenced | DeadLetter]], list[Sequenced | DeadLetter]]:
    """After the source: valid events by kind and source partition, dead letters by reason."""
    def observe(batch: list[Sequenced | DeadLetter]) -> list[Sequenced | DeadLetter]:
        events: dict[tuple[str, str], int] = {}
        dead: list[DeadLetter] = []
        for item in batch:
            if type(item) is Sequenced:
                key = (item.event.kind, item.part)
                events[key] = events.get(key, 0) + 1
            else:
                dead.append(item)  # type: ignore[arg-type]
        metrics.events_read(events)
        metrics.input_rejected(dead)
        return batch
    return observe


def observe_scored(metrics: EngineMetrics) -> Batch:
    """After shared scoring: each scored transaction's fraud score, whether it decided an
    alert and its times (event, source, read), and each feedback event's label with the score
    its transaction had."""
    def observe(batch: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        scored: list[tuple[float, bool, float, float | None, float | None]] = []
        feedback: list[tuple[str, float | None, bool]] = []
        for _, item in batch:
            if not isinstance(item, Scored):
                continue  # the end of a replay (flows.items.AsOf), or a Failed event
            if item.assessment is not None:
                scored.append((item.assessment.fraud_score, item.alert is not None, item.event.t,
                               item.source_time, item.read_at))
            elif item.event.kind == "feedback":
                labelled_score, is_fraud = item.label_outcome or (None, False)
                feedback.append((getattr(item.event, "label", ""), labelled_score, is_fraud))
        metrics.scored_batch(scored, feedback)
        return batch
    return observe
