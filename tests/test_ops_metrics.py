"""Metrics through the real dataflow, the dead-letter reason codes, sink metrics and the
HTTP endpoints."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from ops import EngineMetrics, MeteredSink, Readiness, Telemetry
from ops.health import OpsServer
from ops.metrics import ALERT_TYPES, DEAD_LETTER_REASONS, SEVERITIES, classify_reason
from schemas.events import Event, Feedback, InvalidEvent, Transaction, event_from_obj, parse_event
from schemas.outputs import Alert, CustomerState, DeadLetter
from sinks.delivery import JsonlDeadLetters
from sinks.jsonl import JsonlSink
from sinks.kafka import KafkaSink
from tests.brokers import http_get as get
from tests.ops_flow import BAD_INPUTS, kinds, run_observed, small_stream

GOOD = {"kind": "transaction", "event_id": "e1", "ts": "2026-01-01T00:00:00Z", "customer_id": "c1",
        "amount": 10.0}


def reason_for(raw: bytes | dict) -> str:
    try:
        if isinstance(raw, dict):
            event_from_obj(raw)
        else:
            parse_event(raw)
    except InvalidEvent as exc:
        return str(exc)
    raise AssertionError(f"{raw!r} was accepted")


@pytest.mark.parametrize(("code", "raw"), [
    ("not_utf8", b"\xff\xfe" + b'{"kind": "app"}'),
    ("invalid_json", b'{"kind": "transaction", "amount": '),
    ("not_an_object", b"[1, 2, 3]"),
    ("unknown_kind", {**GOOD, "kind": "trade"}),
    ("missing_field", {k: v for k, v in GOOD.items() if k != "customer_id"}),
    ("bad_timestamp", {**GOOD, "ts": "2026-13-01T00:00:00Z"}),
    ("non_finite", {**GOOD, "amount": float("nan")}),
    ("wrong_type", {**GOOD, "customer_id": 12}),
    ("invalid_value", {**GOOD, "amount": -5}),
    ("invalid_value", {**GOOD, "direction": "sideways"}),
])
def test_every_parser_rejection_has_its_reason_code(code: str, raw: bytes | dict) -> None:
    assert classify_reason(reason_for(raw)) == code


def test_an_unknown_reason_is_other() -> None:
    assert classify_reason("sink refused the record") == "other"
    assert set(DEAD_LETTER_REASONS) >= {"other", "not_utf8", "invalid_json"}


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return small_stream()


def test_metrics_count_what_the_dataflow_did(events: list[Event]) -> None:
    run = run_observed(events)
    out = kinds(run.outputs)
    by_kind = Counter(e.kind for e in events)
    for kind, n in by_kind.items():
        assert run.value("crm_engine_source_events_total", kind=kind, source="topic") == n
    assert sum(run.value("crm_engine_dead_letters_total", reason=code) for code in DEAD_LETTER_REASONS) \
        == len(BAD_INPUTS) == len(out[DeadLetter])
    assert run.value("crm_engine_dead_letters_total", reason="invalid_json") == 1
    alerts = Counter((a.type, a.severity) for a in out[Alert])
    assert alerts, "the stream raised no alert"
    for t in ALERT_TYPES:
        for s in SEVERITIES:
            assert run.value("crm_engine_alerts_total", type=t, severity=s) == alerts.get((t, s), 0)
    # Latency: one observation per alert decided, from each clock (the lifecycle merges some of
    # them into revisions of one alert, so at least as many as emitted); Kafka timestamps were
    # 2 ms old, reads 1 ms.
    n_alerts = len(out[Alert])
    n_decided = run.value("crm_engine_alert_latency_seconds_count", since="event")
    assert n_decided >= n_alerts
    assert run.value("crm_engine_alert_latency_seconds_count", since="source") == n_decided
    assert run.value("crm_engine_alert_latency_seconds_count", since="read") == n_decided
    assert run.value("crm_engine_alert_latency_seconds_sum", since="read") \
        < run.value("crm_engine_alert_latency_seconds_sum", since="source")
    assert run.value("crm_engine_alert_latency_seconds_bucket", since="source", le="0.0005") == 0
    mean = run.value("crm_engine_alert_latency_seconds_sum", since="source") / n_decided
    assert 0.002 <= mean < 60
    n_txns = sum(isinstance(e, Transaction) for e in events)
    assert run.value("crm_engine_scoring_latency_seconds_count") == n_txns
    assert run.value("crm_engine_model_fraud_score_count") == n_txns
    customers = len({e.customer_id for e in events})
    # Every event passes each stage of the engine once.
    for step in ("customer_profile", "shared_scoring", "customer_view"):
        assert run.value("crm_engine_step_items_total", step=step) == len(events)
        assert run.value("crm_engine_step_batch_duration_seconds_count", step=step) > 0
    assert run.value("crm_engine_customers_tracked") == customers == len(out[CustomerState])
    labels = Counter(e.label for e in events if isinstance(e, Feedback))
    assert labels["fraud"] > 0
    for label, n in labels.items():
        assert run.value("crm_engine_model_feedback_total", label=label) == n
    outcomes = {o: run.value("crm_engine_model_labelled_outcomes_total", outcome=o)
                for o in ("true_positive", "false_positive", "false_negative", "true_negative")}
    assert 0 < sum(outcomes.values()) <= labels["fraud"] + labels["legit"]
    assert outcomes["true_positive"] > 0 and outcomes["true_negative"] > 0
    assert run.value("crm_engine_model_labelled_score_count", label="fraud") \
        == outcomes["true_positive"] + outcomes["false_negative"]
    assert run.value("crm_engine_build_info", version="0.1.0", python=pytest.importorskip("platform")
                     .python_version(), bytewax="0.21.1") == 1


def test_metrics_change_no_output_and_add_up_over_two_workers(events: list[Event]) -> None:
    one = run_observed(events, metrics_on=False)
    two = run_observed(events, workers=2)
    assert sorted(r.to_bytes() for r in one.outputs if not isinstance(r, Alert)) == \
        sorted(r.to_bytes() for r in two.outputs if not isinstance(r, Alert))
    alerts = kinds(two.outputs)[Alert]
    assert sorted(a.alert_id for a in alerts) == sorted(a.alert_id for a in kinds(one.outputs)[Alert])
    assert sum(two.value("crm_engine_alerts_total", type=t, severity=s)
               for t in ALERT_TYPES for s in SEVERITIES) == len(alerts)
    assert two.value("crm_engine_customers_tracked") == len({e.customer_id for e in events})
    assert two.value("crm_engine_step_items_total", step="customer_profile") == len(events)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_kafka_sink_reports_failed_deliveries_and_its_buffer(caplog: pytest.LogCaptureFixture,
                                                             tmp_path: Path) -> None:
    """Nothing listens on the port: every record times out, is counted as an error, logged
    with its topic and kept whole in the sink's dead letters."""
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, sinks=("kafka_alerts",))
    refused = tmp_path / "refused.jsonl"
    sink = KafkaSink({"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 300,
                      "enable.idempotence": False}, "alerts", JsonlDeadLetters(refused),
                     metrics=metrics.sink("kafka_alerts"))
    sink.open()
    records = [DeadLetter.of(b"x", "test", {"n": i}) for i in range(3)]
    sink.write_batch(records)
    assert registry.get_sample_value("crm_engine_sink_buffered_records", {"sink": "kafka_alerts"}) == 3
    sink.close()
    assert registry.get_sample_value("crm_engine_sink_errors_total", {"sink": "kafka_alerts"}) == 3
    assert registry.get_sample_value("crm_engine_sink_lost_total", {"sink": "kafka_alerts"}) == 0
    failures = [r for r in caplog.records if r.name == "sinks.kafka" and "failed" in r.getMessage()]
    assert len(failures) == 3 and all(getattr(r, "topic", None) == "alerts" for r in failures)
    letters = [DeadLetter(**orjson.loads(line)) for line in refused.read_bytes().splitlines()]
    assert sorted(letter.raw() for letter in letters) == sorted(r.to_bytes() for r in records)
    assert all("_MSG_TIMED_OUT" in letter.reason and letter.source["topic"] == "alerts" for letter in letters)


def test_metered_sink_counts_records_and_holds_readiness_until_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    telemetry = Telemetry(EngineMetrics(CollectorRegistry()), Readiness(stop))
    telemetry.readiness.source_connected()
    sink = MeteredSink(JsonlSink(tmp_path / "a.jsonl"), "file_alerts", telemetry)
    assert telemetry.readiness.status() == (False, "sinks not open: file_alerts")
    sink.open()
    assert telemetry.readiness.status() == (True, "ready")
    sink.write_batch([DeadLetter.of(b"x", "r", {})] * 4)
    sink.close()
    assert telemetry.metrics.registry.get_sample_value("crm_engine_sink_records_total", {"sink": "file_alerts"}) == 4
    stop.set()
    assert telemetry.readiness.status() == (False, "draining")


@pytest.fixture
def server() -> Iterator[tuple[str, Readiness]]:
    registry = CollectorRegistry()
    EngineMetrics(registry, sources=("transactions",))
    readiness = Readiness(threading.Event())
    ops = OpsServer("127.0.0.1", 0, registry, readiness).start()
    try:
        yield f"http://127.0.0.1:{ops.port}", readiness
    finally:
        ops.close()




def test_endpoints(server: tuple[str, Readiness]) -> None:
    base, readiness = server
    assert get(base + "/healthz") == (200, "ok\n")
    assert get(base + "/readyz") == (503, "sources not connected\n")
    readiness.source_connected()
    assert get(base + "/readyz") == (200, "ready\n")
    status, body = get(base + "/metrics")
    assert status == 200
    assert 'crm_engine_source_events_total{kind="transaction",source="transactions"} 0.0' in body
    assert get(base + "/nothing")[0] == 404
