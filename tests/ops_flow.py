"""A small stream through the real dataflow with metrics on a fresh registry (ops tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource
from prometheus_client import CollectorRegistry

from config.settings import load_settings
from flows.dataflow import Outputs, build_flow
from flows.items import Sequenced
from flows.modes import engine_config, wall_clock
from ops.metrics import EngineMetrics
from schemas.events import Event, event_from_obj
from schemas.outputs import Alert, CustomerState, DeadLetter, Score
from simulator import SimulatorConfig, generate

BAD_INPUTS = (b'{"kind": "transaction", "amount": ', b"[1, 2]",
              b'{"kind":"trade","event_id":"e","ts":"2026-01-01T00:00:00Z","customer_id":"c"}')


def small_stream(customers: int = 60, days: float = 10.0) -> list[Event]:
    """A labelled simulator stream with every kind of event, alerts and fraud feedback."""
    config = SimulatorConfig(customers=customers, days=days, seed=3, fraud_rate=0.5)
    return [event_from_obj(obj) for obj in generate(config)]


@dataclass
class Observed:
    registry: CollectorRegistry
    outputs: list[Any]

    def value(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        assert value is not None, f"no sample {name}{labels}"
        return value


def run_observed(events: list[Event], workers: int = 1, metrics_on: bool = True,
                 source_delay_s: float = 0.002, recovery_dir: Path | None = None) -> Observed:
    """Run ``events`` (source partition ``topic#0``, Kafka timestamps ``source_delay_s`` ago,
    read from the broker half as long ago) and ``BAD_INPUTS`` through ``build_flow``; with
    ``metrics_on``, on a fresh registry; with ``recovery_dir``, with recovery there (one
    partition, created) and an epoch every 10 ms, its store watched by the metrics."""
    settings = load_settings()
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, sources=("topic",), sinks=("kafka_alerts",),
                            alert_threshold=settings.fraud.alert_threshold) if metrics_on else None
    stamp = time.time() - source_delay_s
    items: list[Sequenced | DeadLetter] = [DeadLetter.of(raw, reason, {"test": i}) for i, (raw, reason) in
                                           enumerate(_rejections())]
    read_at = time.time() - source_delay_s / 2
    items += [Sequenced("topic#0", seq, event, stamp, read_at) for seq, event in enumerate(events)]
    out: list[Any] = []
    sink = TestingSink(out)
    outputs = Outputs(alerts={"t": sink}, scores={"t": sink}, states={"t": sink}, dead_letters={"t": sink})
    config = engine_config(settings, wall_clock, watermark=events[-1].t, emit_scores=True)
    recovery = None
    if recovery_dir is not None:
        from bytewax.recovery import RecoveryConfig, init_db_dir

        from flows.recovery import PATTERN

        recovery_dir.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery_dir, 1)
        recovery = RecoveryConfig(recovery_dir)
        if metrics is not None:
            metrics.watch_recovery_store(recovery_dir, PATTERN)
    cli_main(build_flow(TestingSource(items, batch_size=200), outputs, config, metrics=metrics,
                        snapshots=recovery is not None),
             workers_per_process=workers, recovery_config=recovery,
             epoch_interval=timedelta(milliseconds=10) if recovery is not None else None)
    return Observed(registry, out)


def _rejections() -> list[tuple[bytes, str]]:
    from schemas.events import InvalidEvent, parse_event

    found = []
    for raw in BAD_INPUTS:
        try:
            parse_event(raw)
        except InvalidEvent as exc:
            found.append((raw, str(exc)))
    return found


def kinds(outputs: list[Any]) -> dict[type, list[Any]]:
    by: dict[type, list[Any]] = {Alert: [], Score: [], CustomerState: [], DeadLetter: []}
    for record in outputs:
        by[type(record)].append(record)
    return by
