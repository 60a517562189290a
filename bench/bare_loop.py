"""The reference: the engine's exact per-event logic in a bare Python loop.

No Bytewax, no Kafka, no exchange between workers: each event goes through the same three
step objects the dataflow uses (per-customer profile, shared scoring, per-customer view),
called directly, in batches of the size the replay source emits, and every output record
is serialised as a sink would. The engine's
throughput is quoted against this loop.
"""

from __future__ import annotations

from config.settings import Settings
from flows.items import Observed, Sequenced
from flows.modes import event_clock, step_config
from flows.sources import ReplayInput, ReplaySource
from flows.steps import CustomerStep, CustomerViewStep, SharedScoringStep


def run_bare(settings: Settings, replay: ReplayInput, emit_scores: bool = True,
             batch_size: int = ReplaySource.BATCH_SIZE) -> dict[str, int]:
    """Process ``replay`` in one loop; return the number of records of each output kind."""
    config = step_config(settings, event_clock, replay.watermark, emit_scores=emit_scores)
    customers: dict[str, CustomerStep] = {}
    views: dict[str, CustomerViewStep] = {}
    shared = SharedScoringStep(config, None)
    counts = {"dead_letters": len(replay.dead_letters), "alerts": 0, "scores": 0, "states": 0, "bytes": 0}
    size = sum(len(d.to_bytes()) for d in replay.dead_letters)
    events = replay.events
    for start in range(0, len(events), batch_size):
        # As the dataflow does: the per-customer step event by event, the shared step a batch
        # at a time, then the per-customer view.
        observed: list[Observed] = []
        for seq in range(start, min(start + batch_size, len(events))):
            event = events[seq]
            step = customers.get(event.customer_id)
            if step is None:
                step = customers[event.customer_id] = CustomerStep(config, None)
            observed.extend(step.on_batch([Sequenced(ReplaySource.PART, seq, event)])[0])
        scored, _ = shared.on_batch(observed)
        for item in scored:
            customer = item.event.customer_id
            view = views.get(customer)
            if view is None:
                view = views[customer] = CustomerViewStep(config, None)
            records, _ = view.on_batch([item])
            for record in records:
                size += len(record.to_bytes())
                counts["alerts" if hasattr(record, "alert_id") else "scores"] += 1
    # The end of the replay: each customer's churn evidence as of the last event time,
    # scored by the shared step, then the customer state.
    for step in customers.values():
        shared.on_batch(list(step.on_eof()[0]))
    for final in shared.on_eof()[0]:
        records, _ = views[final.customer_id].on_batch([final])
        for record in records:
            size += len(record.to_bytes())
            counts["states"] += 1
    counts["bytes"] = size
    return counts
