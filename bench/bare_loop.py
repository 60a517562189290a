"""The reference: the engine's exact per-event logic in a bare Python loop.

No Bytewax, no Kafka, no exchange between workers: each event goes through the same three
step objects the dataflow uses (per-customer profile, shared scoring, per-customer view),
called directly, in batches of the size the replay source emits, and every output record
is serialised as a sink would. The engine's
throughput is quoted against this loop.
"""

from __future__ import annotations

from config.settings import Settings
from flows.items import AsOf, Failed, Observed, Scored, Sequenced
from flows.modes import event_clock, step_config
from flows.sources import ReplayInput, ReplaySource
from flows.steps import CustomerStep, CustomerViewStep, Output, SharedScoringStep, StepConfig
from schemas.outputs import LifecycleChange


class EngineSteps:
    """The dataflow's three stateful steps called directly, one logic object per key as
    Bytewax keeps them: the per-customer step event by event, the shared step a batch at a
    time, then the per-customer view."""

    def __init__(self, config: StepConfig) -> None:
        self.config = config
        self.customers: dict[str, CustomerStep] = {}
        self.views: dict[str, CustomerViewStep] = {}
        self.shared = SharedScoringStep(config, None)

    def score(self, batch: list[Sequenced]) -> list[Scored | Failed]:
        """``batch`` through the per-customer and the shared steps."""
        observed: list[Observed | AsOf | Failed] = []
        for sequenced in batch:
            customer = sequenced.event.customer_id
            step = self.customers.get(customer)
            if step is None:
                step = self.customers[customer] = CustomerStep(self.config, None)
            observed.extend(step.on_batch([sequenced])[0])
        scored, _ = self.shared.on_batch(observed)
        return list(scored)

    def view(self, item: Scored | AsOf | Failed) -> list[Output | LifecycleChange]:
        """One item through its customer's view: the records it gives."""
        customer = item.event.customer_id if isinstance(item, Scored) else item.customer_id
        view = self.views.get(customer)
        if view is None:
            view = self.views[customer] = CustomerViewStep(self.config, None)
        return list(view.on_batch([item])[0])

    def end(self) -> list[Output | LifecycleChange]:
        """The end of a replay: each customer's churn evidence as of the last event time,
        scored by the shared step, then the customer states."""
        for step in self.customers.values():
            self.shared.on_batch(list(step.on_eof()[0]))
        return [record for final in self.shared.on_eof()[0] for record in self.view(final)]


def run_bare(settings: Settings, replay: ReplayInput, emit_scores: bool = True,
             batch_size: int = ReplaySource.BATCH_SIZE) -> dict[str, int]:
    """Process ``replay`` in one loop; return the number of records of each output kind."""
    steps = EngineSteps(step_config(settings, event_clock, replay.watermark, emit_scores=emit_scores))
    counts = {"dead_letters": len(replay.dead_letters), "alerts": 0, "scores": 0, "states": 0, "bytes": 0}
    size = sum(len(d.to_bytes()) for d in replay.dead_letters)
    events = replay.events
    for start in range(0, len(events), batch_size):
        batch = [Sequenced(ReplaySource.PART, seq, events[seq])
                 for seq in range(start, min(start + batch_size, len(events)))]
        for item in steps.score(batch):
            for record in steps.view(item):
                size += len(record.to_bytes())
                counts["alerts" if hasattr(record, "alert_id") else "scores"] += 1
    for record in steps.end():
        size += len(record.to_bytes())
        counts["states"] += 1
    counts["bytes"] = size
    return counts
