"""The metric hooks' side of the dataflow: plain facts from the items between its steps.

``ops.metrics.EngineMetrics`` observes per-event facts (kinds, source partitions, fraud
scores, timestamps) and output records (alerts, dead letters), never the dataflow's items
(``flows.items``). Each function here makes the batch function of an observing step for
``op.flat_map_batch`` where the stream carries items: it extracts the facts of a batch, hands
them to the metrics once, and passes the batch on unchanged. (Where the stream carries
records, the metrics' own hooks take them: ``observe_failures``, ``observe_alerts``; the engine
reports its scores, labels and stage times itself: ``engine.shard.Observer``.)
``flows.dataflow.build_flow`` wires them only with metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flows.items import Sequenced
from schemas.outputs import DeadLetter

if TYPE_CHECKING:
    from ops.metrics import EngineMetrics

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
