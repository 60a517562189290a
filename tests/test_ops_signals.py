"""The operational signals beyond the dataflow's counts: sink delivery latency and buffer
capacity (against a real Redis), checkpoints and the recovery store, prompts and
suppressions."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from config.settings import load_settings
from ops import EngineMetrics, MeteredSink, Readiness, Telemetry
from ops.metrics import ALERT_TYPES, SUPPRESSION_REASONS
from schemas.events import Event
from schemas.outputs import LifecycleChange, Prompt
from sinks.delivery import JsonlDeadLetters, RetryPolicy
from sinks.jsonl import JsonlSink
from sinks.redis import RedisSink
from tests.ops_flow import run_observed, small_stream
from tests.services import RedisServer, redis_server, wait_until
from tests.test_delivery import make_alerts


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def telemetry() -> Telemetry:
    return Telemetry(EngineMetrics(CollectorRegistry()), Readiness(threading.Event()))


def sample(t: Telemetry, name: str, **labels: str) -> float:
    value = t.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def test_a_buffered_sink_reports_its_capacity_fill_and_delivery_latency(redis_srv: RedisServer,
                                                                        tmp_path: Path) -> None:
    """Redis frozen for a second: the records wait in the buffer (of its capacity), and each
    one's delivery latency, counted once when Redis confirms it, includes the outage."""
    t = telemetry()
    sink = MeteredSink(RedisSink(redis_srv.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="sig:",
                                 capacity=500, socket_timeout_s=0.3, policy=RetryPolicy(base_s=0.05, max_s=0.2)),
                       "redis", t)
    assert sample(t, "crm_engine_sink_buffer_capacity_records", sink="redis") == 500
    sink.open()
    sink.write_batch(make_alerts(20))
    assert wait_until(lambda: sample(t, "crm_engine_sink_delivery_latency_seconds_count", sink="redis") == 20, 10)
    redis_srv.pause()
    try:
        sink.write_batch(make_alerts(30, start=20))
        time.sleep(1.0)
        assert sample(t, "crm_engine_sink_buffered_records", sink="redis") == 30
        assert sample(t, "crm_engine_sink_delivery_latency_seconds_count", sink="redis") == 20
    finally:
        redis_srv.resume()
    assert wait_until(lambda: sample(t, "crm_engine_sink_delivery_latency_seconds_count", sink="redis") == 50, 30)
    sink.close()
    assert sample(t, "crm_engine_sink_buffered_records", sink="redis") == 0
    # The 30 records written during the outage each waited at least the second it lasted.
    assert sample(t, "crm_engine_sink_delivery_latency_seconds_bucket", sink="redis", le="1.0") <= 20
    assert sample(t, "crm_engine_sink_delivery_latency_seconds_sum", sink="redis") >= 30 * 1.0
    assert sample(t, "crm_engine_sink_errors_total", sink="redis") == 0


def test_a_synchronous_sink_has_no_buffer_and_its_write_is_its_latency(tmp_path: Path) -> None:
    t = telemetry()
    sink = MeteredSink(JsonlSink(tmp_path / "alerts.jsonl"), "file_alerts", t)
    sink.open()
    sink.write_batch(make_alerts(7))
    sink.write_batch(make_alerts(3, start=7))
    sink.close()
    assert sample(t, "crm_engine_sink_buffer_capacity_records", sink="file_alerts") == 0
    assert sample(t, "crm_engine_sink_delivery_latency_seconds_count", sink="file_alerts") == 10
    assert 0 < sample(t, "crm_engine_sink_delivery_latency_seconds_sum", sink="file_alerts") < 10


def test_a_kafka_sink_exports_its_producer_queue_as_its_capacity(tmp_path: Path) -> None:
    from sinks.kafka import KafkaSink

    metrics = EngineMetrics(CollectorRegistry())
    KafkaSink({"bootstrap.servers": "127.0.0.1:1", "queue.buffering.max.messages": 5000}, "alerts",
              JsonlDeadLetters(tmp_path / "refused.jsonl"), metrics=metrics.sink("kafka_alerts"))
    assert metrics.registry.get_sample_value("crm_engine_sink_buffer_capacity_records", {"sink": "kafka_alerts"}) \
        == 5000


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return small_stream()


def test_prompts_and_suppressed_alerts_are_counted_from_the_engines_records(events: list[Event]) -> None:
    """Counted from the records the engine emits (before any sink), so the counts match what
    the engine decided: every prompt by action and trigger, every trigger the lifecycle held
    back by alert type and reason."""
    from engine.shard import Shard
    from flows.modes import engine_config, wall_clock

    settings = load_settings()
    config = engine_config(settings, wall_clock, watermark=events[-1].t)
    records = Shard(config).process(events)
    prompts = Counter((r.action, r.trigger) for r in records if isinstance(r, Prompt))
    changes = Counter((r.alert_type, r.action) for r in records if isinstance(r, LifecycleChange))
    assert prompts and changes[("suspicious_transaction", "deduplicated")] > 0
    run = run_observed(events)
    assert sum(run.value("crm_engine_nba_prompts_total", action=a, trigger=t) for a, t in prompts) \
        == sum(prompts.values())
    for (action, trigger), n in prompts.items():
        assert run.value("crm_engine_nba_prompts_total", action=action, trigger=trigger) == n
    for alert_type in ALERT_TYPES:
        for change, reason in SUPPRESSION_REASONS.items():
            assert run.value("crm_engine_alerts_suppressed_total", type=alert_type, reason=reason) \
                == changes.get((alert_type, change), 0), (alert_type, reason)


def test_checkpoints_report_their_duration_and_size_and_the_store_its_bytes(events: list[Event],
                                                                            tmp_path: Path) -> None:
    run = run_observed(events[:3000], recovery_dir=tmp_path / "recovery")
    snapshots = run.value("crm_engine_snapshot_duration_seconds_count")
    assert snapshots >= 2  # an epoch every 10 ms over the run
    assert 0 < run.value("crm_engine_snapshot_duration_seconds_sum") < 60
    assert run.value("crm_engine_snapshot_size_bytes") > 10_000  # the shard, pickled
    on_disk = sum(p.stat().st_size for p in (tmp_path / "recovery").iterdir())
    assert run.value("crm_engine_recovery_store_size_bytes") == on_disk > 0


def test_without_recovery_no_snapshot_is_taken(events: list[Event]) -> None:
    run = run_observed(events[:500])
    assert run.value("crm_engine_snapshot_duration_seconds_count") == 0
    assert run.registry.get_sample_value("crm_engine_recovery_store_size_bytes") is None


def test_bytewax_metrics_say_so_when_its_api_does_not_answer() -> None:
    from ops.dataflow_api import BytewaxMetrics
    from tests.brokers import free_port

    registry = CollectorRegistry()
    BytewaxMetrics(free_port(), registry, timeout_s=0.5)
    assert registry.get_sample_value("crm_engine_bytewax_api_up") == 0
    assert not [f for f in registry.collect() if f.name.startswith("bytewax_")]
