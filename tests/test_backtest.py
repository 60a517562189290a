"""The rule back-test against a direct computation: the alerts of a replay through the
dataflow (with the changed rule and without), counted and scored by hand against the
stream's own labels, must be what ``run.py backtest`` reports."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from config.settings import load_settings
from flows.backtest import FRAUD_ALERT_TYPES, BadChange, backtest, parse_change
from tests.conftest import ROOT, replay


def direct(alerts: list[dict], events: Path) -> dict[str, float | int | None]:
    """Alert groups, true positives and precision computed from a replay's alert file and
    the stream's feedback lines, without the back-test's code."""
    labels = {}
    for line in events.read_bytes().splitlines():
        event = orjson.loads(line)
        if event["kind"] == "feedback" and event["label"] in ("fraud", "legit") and event.get("ref_event_id"):
            labels[event["ref_event_id"]] = event["label"]
    groups: dict[str, set[str]] = {}
    for alert in alerts:
        if alert["type"] in FRAUD_ALERT_TYPES:
            groups.setdefault(alert.get("group_key") or alert["alert_id"], set()).add(labels.get(alert["event_id"], ""))
    tp = sum("fraud" in found for found in groups.values())
    return {"alerts": len(groups), "true_positives": tp, "precision": tp / len(groups) if groups else None}


def test_backtest_matches_replays_of_both_settings(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    settings = load_settings()
    change = parse_change("rules.large_amount_ratio=2.5", settings)
    result = backtest(settings, events, [change])
    changed = dataclasses.replace(settings, rules=dataclasses.replace(settings.rules, large_amount_ratio=2.5))
    for name, run_settings in (("current", settings), ("changed", changed)):
        expected = direct(replay(events, tmp_path / name, run_settings).records("alerts"), events)
        got = result[name]
        assert {k: got[k] for k in expected} == expected, name
        assert got["alerts"] > 0 and got["fraud_labels"] > 0
    # a lower ratio hits more transactions: more alert groups, never fewer
    assert result["changed"]["alerts"] > result["current"]["alerts"]
    assert result["current"]["settings"] == {"rules.large_amount_ratio": 5.0}
    assert result["changed"]["settings"] == {"rules.large_amount_ratio": 2.5}


def test_a_change_must_name_a_rule_threshold_with_a_value_of_its_type() -> None:
    settings = load_settings()
    assert parse_change("rules.velocity_1h=6", settings).value == 6
    for bad in ("rules.velocity_1h=6.5", "rules.nope=1", "fraud.alert_threshold=0.5", "velocity_1h=6",
                "rules.in_out_ratio=abc", "rules.in_out_ratio=-1", "rules.in_out_ratio=nan"):
        with pytest.raises(BadChange):
            parse_change(bad, settings)


def test_the_command_line_prints_both_runs(sim_stream: tuple[Path, Path]) -> None:
    events, _ = sim_stream
    done = subprocess.run([sys.executable, "run.py", "backtest", "--input", str(events), "--set",
                           "rules.velocity_1h=4", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert result["changes"] == ["rules.velocity_1h=4"]
    assert result["changed"]["settings"] == {"rules.velocity_1h": 4}
    bad = subprocess.run([sys.executable, "run.py", "backtest", "--input", str(events), "--set", "rules.x=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "not a key of [rules]" in bad.stderr
