"""Alert lifecycle: de-duplication, grouping, escalation and snoozes, alone and through the
real dataflow into a real Redis (alerts stream, customer hashes, audit log)."""

from __future__ import annotations

import pickle
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis

from config.settings import Settings, load_settings
from detectors.lifecycle import AlertLifecycle, LifecycleParams
from flows.dataflow import Outputs, build_flow
from flows.modes import engine_config, event_clock, execute
from flows.outputs import as_single_writer
from flows.sources import ReplaySource, load_replay
from schemas.audit import AuditKeys
from schemas.outputs import Alert, Reason, format_ts
from schemas.redis_keys import RedisKeys
from sinks.audit import RedisAuditSink, verify_redis
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisSink
from tests.conftest import audit_key_file, replay
from tests.services import redis_server

PARAMS = LifecycleParams(dedup_bucket_minutes=60, group_window_minutes=15)


def trigger(i: int, kind: str = "suspicious_transaction", severity: str = "medium", customer: str = "c1") -> Alert:
    return Alert(f"al-{i}", kind, severity, 0.5 + i / 100, customer, None, f"e{i}",  # type: ignore[arg-type]
                 format_ts(i * 60.0), format_ts(i * 60.0), (Reason(f"r{i}", f"reason {i}", None, 0.5),), "m1")


def run(life: AlertLifecycle, alerts: list[tuple[float, Alert]]) -> list[Alert | None]:
    return [life.on_alert(alert, t, PARAMS)[0] for t, alert in alerts]


def test_repeated_trigger_updates_instead_of_duplicating() -> None:
    life = AlertLifecycle()
    out = run(life, [(0, trigger(1)), (60, trigger(2)), (120, trigger(3, severity="low"))])
    assert out[0] is not None and out[1] is None and out[2] is None
    assert life.groups["risk"].count == 3
    _, changes = life.on_alert(trigger(4), 180, PARAMS)
    assert [(c.action, c.alert_id, c.detail) for c in changes] == [("deduplicated", "al-4", "c1:al-1")]


def test_one_customers_alerts_in_the_window_group_into_one() -> None:
    life = AlertLifecycle()
    out = run(life, [(0, trigger(1)), (300, trigger(2, "aml_pattern", "low")),
                     (600, trigger(3, "account_takeover", "critical")), (16 * 60, trigger(4))])
    first, grouped, escalated, new_group = out
    assert first is not None and grouped is not None and escalated is not None and new_group is not None
    assert [a.status for a in out if a] == ["firing", "grouped", "escalated", "firing"]
    assert grouped.group_key == escalated.group_key == "c1:al-1" and new_group.group_key == "c1:al-4"
    assert [grouped.revision, escalated.revision, new_group.revision] == [2, 3, 1]
    assert grouped.severity == "medium"  # the group's severity, not the lower trigger's
    assert [r.code for r in escalated.reasons] == ["r3", "r2", "r1"]
    assert escalated.alert_id == "al-3" and escalated.type == "account_takeover"


def test_the_risk_teams_and_the_rms_alerts_are_grouped_apart() -> None:
    """A churn or complaint alert right after a fraud alert starts the RM's own group: it
    carries no fraud reason, and the fraud group stays the risk team's."""
    life = AlertLifecycle()
    fraud, complaint, churn, takeover = run(life, [
        (0, trigger(1)), (60, trigger(2, "complaint_escalation", "high")), (120, trigger(3, "churn_risk")),
        (180, trigger(4, "account_takeover", "critical"))])
    assert fraud is not None and complaint is not None and churn is not None and takeover is not None
    assert (complaint.status, complaint.group_key, [r.code for r in complaint.reasons]) == ("firing", "c1:al-2", ["r2"])
    assert (churn.status, churn.group_key, [r.code for r in churn.reasons]) == ("grouped", "c1:al-2", ["r3", "r2"])
    assert (takeover.status, takeover.group_key, [r.code for r in takeover.reasons]) == (
        "escalated", "c1:al-1", ["r4", "r1"])


def test_an_earlier_releases_one_group_restores_as_the_risk_teams() -> None:
    life = AlertLifecycle()
    run(life, [(0, trigger(1))])
    old = AlertLifecycle.__new__(AlertLifecycle)
    old.__setstate__((life.groups["risk"], {}))  # what an earlier release pickled
    assert run(old, [(60, trigger(2, "aml_pattern"))])[0].group_key == "c1:al-1"  # type: ignore[union-attr]
    empty = AlertLifecycle.__new__(AlertLifecycle)
    empty.__setstate__((None, {}))
    assert empty.groups == {}


def test_a_new_time_bucket_is_a_new_dedup_key() -> None:
    life = AlertLifecycle()
    out = run(life, [(59 * 60, trigger(1)), (61 * 60, trigger(2))])  # same group, next hour
    assert out[1] is not None and out[1].status == "grouped"
    assert out[0] is not None and out[0].dedup_key != out[1].dedup_key


def test_snooze_suppresses_until_it_expires_and_can_be_lifted() -> None:
    life = AlertLifecycle()
    change = life.snooze("c1", "aml_pattern", until_t=3600, t=0, event_id="ctl1", ts=format_ts(0))
    assert (change.action, change.detail) == ("snoozed", "1970-01-01T01:00:00.000Z")
    suppressed, changes = life.on_alert(trigger(1, "aml_pattern"), 600, PARAMS)
    assert suppressed is None and [c.action for c in changes] == ["suppressed"]
    assert life.on_alert(trigger(2), 660, PARAMS)[0] is not None  # another type fires
    assert life.on_alert(trigger(3, "aml_pattern"), 3601, PARAMS)[0] is not None  # expired
    life.snooze("c1", "*", until_t=10**9, t=4000, event_id="ctl2", ts=format_ts(4000))
    assert life.on_alert(trigger(4, "account_takeover", "critical"), 4100, PARAMS)[0] is None
    lifted = life.snooze("c1", "*", until_t=4200, t=4200, event_id="ctl3", ts=format_ts(4200))
    assert lifted.action == "unsnoozed"
    assert life.on_alert(trigger(5, "account_takeover", "critical"), 4300, PARAMS)[0] is not None


def test_lifecycle_state_pickles_small_and_resumes_identically() -> None:
    alerts = [(i * 200.0, trigger(i, ("suspicious_transaction", "aml_pattern")[i % 2],
                                    ("low", "medium", "high")[i % 3])) for i in range(200)]
    whole = run(AlertLifecycle(), alerts)
    life = AlertLifecycle()
    head = run(life, alerts[:77])
    blob = pickle.dumps(life)
    assert len(blob) < 8000
    assert head + run(pickle.loads(blob), alerts[77:]) == whole


def with_lifecycle(settings: Settings, enabled: bool) -> Settings:
    view = settings.view
    return replace(settings, view=replace(view, lifecycle=replace(view.lifecycle, enabled=enabled)))


@pytest.fixture(scope="module")
def triggers(sim_stream: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every alert the detectors trigger on the simulator stream (lifecycle off)."""
    settings = with_lifecycle(load_settings(), False)
    return replay(sim_stream[0], tmp_path_factory.mktemp("triggers"), settings).records("alerts")


def test_replay_with_lifecycle_keeps_every_group_and_drops_only_repeats(
        sim_stream: tuple[Path, Path], triggers: list[dict], tmp_path: Path) -> None:
    events, _ = sim_stream
    settings = load_settings()
    emitted = replay(events, tmp_path / "on", settings).records("alerts")
    by_id = {a["alert_id"]: a for a in triggers}
    assert set(by_id) > {a["alert_id"] for a in emitted} and len(emitted) < len(triggers)
    groups: dict[str, list[dict]] = defaultdict(list)
    for alert in sorted(emitted, key=lambda a: (a["event_ts"], a["revision"])):
        groups[alert["group_key"]].append(alert)
    assert any(len(g) > 1 for g in groups.values()), "the stream should have grouped alerts"
    for key, group in groups.items():
        assert [a["revision"] for a in group] == list(range(1, len(group) + 1)), key
        assert group[0]["status"] == "firing" and all(a["status"] in ("grouped", "escalated") for a in group[1:])
    # Every customer with a trigger still has an alert: de-duplication never hides a customer.
    assert {a["customer_id"] for a in triggers} == {a["customer_id"] for a in emitted}


def test_snoozes_dedup_and_grouping_reach_redis(sim_stream: tuple[Path, Path], triggers: list[dict],
                                                tmp_path: Path) -> None:
    events, _ = sim_stream
    settings = load_settings()
    per_customer: dict[str, list[dict]] = defaultdict(list)
    for alert in triggers:
        per_customer[alert["customer_id"]].append(alert)
    muted, partly = sorted(per_customer, key=lambda c: -len(per_customer[c]))[:2]
    lines = events.read_bytes().splitlines()
    first_ts = orjson.loads(lines[0])["ts"]
    partly_alerts = sorted(per_customer[partly], key=lambda a: a["event_ts"])
    partly_type = partly_alerts[0]["type"]
    cut = partly_alerts[len(partly_alerts) // 2]["event_ts"]
    controls = [
        {"kind": "control", "event_id": "ctl-1", "ts": first_ts, "customer_id": muted, "action": "snooze",
         "alert_type": "*", "until": "2100-01-01T00:00:00Z", "by": "analyst-7"},
        {"kind": "control", "event_id": "ctl-2", "ts": first_ts, "customer_id": partly, "action": "snooze",
         "alert_type": partly_type, "until": cut},
    ]
    path = tmp_path / "with_controls.jsonl"
    path.write_bytes(b"\n".join([*map(orjson.dumps, controls), *lines]) + b"\n")
    expected = replay(path, tmp_path / "on", settings).records("alerts")
    assert not any(a["customer_id"] == muted for a in expected)
    assert not any(a["customer_id"] == partly and a["type"] == partly_type and a["event_ts"] < cut
                   for a in expected)
    with redis_server(tmp_path) as server:
        dead = JsonlDeadLetters(tmp_path / "dead.jsonl")
        keys = AuditKeys.load(audit_key_file(tmp_path))
        outputs = Outputs(alerts={"redis": as_single_writer(lambda: RedisSink(server.url, dead, prefix="lc:"))},
                          audit={"audit": as_single_writer(lambda: RedisAuditSink(server.url, "lc:audit", keys, dead))})
        execute(build_flow(ReplaySource(load_replay(path)), outputs, engine_config(settings, event_clock)), settings, 1)
        client = redis.Redis.from_url(server.url)
        stream = [orjson.loads(f[b"data"]) for _, f in client.xrange(RedisKeys("lc:").alerts())]
        assert sorted(a["alert_id"] for a in stream) == sorted(a["alert_id"] for a in expected)
        # The customer hash holds one open entry per group, the latest revision of it.
        latest: dict[tuple[str, str], dict] = {}
        for alert in expected:
            key = (alert["customer_id"], alert["group_key"])
            if key not in latest or alert["revision"] > latest[key]["revision"]:
                latest[key] = alert
        some_customer = expected[0]["customer_id"]
        fields = client.hgetall(RedisKeys("lc:").customer(some_customer))
        opened = {k.decode()[5:]: orjson.loads(v) for k, v in fields.items() if k.startswith(b"open:")}
        assert {g: a["alert_id"] for g, a in opened.items()} == {
            g: a["alert_id"] for (c, g), a in latest.items() if c == some_customer}
        audit = [orjson.loads(e) for e in client.lrange("lc:audit", 0, -1)]
        actions = defaultdict(list)
        for entry in audit:
            actions[entry["record"].get("action", "alert")].append(entry["record"])
        assert sorted(r["event_id"] for r in actions["snoozed"]) == ["ctl-1", "ctl-2"]
        assert {r["customer_id"] for r in actions["suppressed"]} == {muted, partly}
        assert len(actions["alert"]) == len(expected)
        assert actions["deduplicated"] and (actions["grouped"] or actions["escalated"])
        assert verify_redis(server.url, "lc:audit", keys) == (True, f"{len(audit)} entries verified")


def test_snooze_command_produces_a_control_event(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from schemas.events import Control, parse_event
    from tests.brokers import consume_all, create_topics, tansu_broker
    from tests.conftest import ROOT

    def snooze(env: dict[str, str], until: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "run.py", "snooze", "--customer", "c7", "--type", "aml_pattern",
                               "--until", until, "--by", "analyst-1", "--ts", "2026-01-01T00:00:00Z"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    with tansu_broker(tmp_path) as broker:
        create_topics(broker, {"control": 1})
        env = {**os.environ, "CRM__KAFKA__BOOTSTRAP_SERVERS": broker}
        missing = snooze(env, "2026-01-02T00:00:00Z")
        assert missing.returncode == 2 and "control_topic" in missing.stderr
        env["CRM__KAFKA__CONTROL_TOPIC"] = "control"
        assert snooze(env, "2026-01-02T00:00:00Z").returncode == 0
        assert snooze(env, "2025-12-31T00:00:00Z").returncode == 0  # in the past: lifts it
        bad = snooze(env, "tomorrow")
        assert bad.returncode == 2 and "until" in bad.stderr
        values = consume_all(broker, "control", expect=2, timeout=30)
    events = [parse_event(v) for v in values]
    assert all(isinstance(e, Control) and e.customer_id == "c7" and e.by == "analyst-1" for e in events)
    assert [(e.action, e.until_t) for e in events] == [  # type: ignore[union-attr]
        ("snooze", 1767312000.0), ("unsnooze", 1767139200.0)]
