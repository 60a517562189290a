"""Champion / challenger: the gradient-boosted challenger, prequential figures, promotion.

The end-to-end test replays a stream whose frauds are an interaction the logistic model
cannot represent (night XOR foreign), through the real dataflow with the audit log on: the
trees must win on the delayed labels, be promoted, be audited and then decide the alerts.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from config.settings import load_settings
from detectors.challengers import (
    LINEAR,
    TREES,
    BoostedTrees,
    ChampionChallenger,
    ChampionParams,
    LabelWindow,
    Prequential,
    TreesParams,
)
from detectors.quality import auc_and_average_precision, average_precision, roc_auc
from flows.modes import ReplayPaths, run_replay
from schemas.audit import AuditKeys
from sinks.audit import verify_file
from tests.challenger_stream import quick_challenger, xor_events
from tests.conftest import audit_key_file

DAY = 86400.0


def _xor_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.random((n, 4))
    a, b = x[:, 0] > 0.5, x[:, 1] > 0.5
    return x, a ^ b


# -- the training window --------------------------------------------------------------------


def test_window_keeps_every_fraud_samples_legit_rows_and_weights_them_back_up() -> None:
    window = LabelWindow(3, LabelWindow.Params(legit_sample=0.25))
    rng = np.random.default_rng(0)
    x = rng.random((4000, 3))
    fraud = rng.random(4000) < 0.05
    window.add(x, fraud, np.ones(4000), DAY)
    tx, ty, tw = window.training_set(DAY, 30 * DAY)
    assert int(ty.sum()) == int(fraud.sum())  # every fraud
    legit = len(ty) - int(ty.sum())
    assert 0.2 * (4000 - fraud.sum()) < legit < 0.3 * (4000 - fraud.sum())
    assert set(tw[ty == 0].tolist()) == {4.0} and set(tw[ty == 1].tolist()) == {1.0}
    again = LabelWindow(3, LabelWindow.Params(legit_sample=0.25))
    again.add(x, fraud, np.ones(4000), DAY)
    assert np.array_equal(again.training_set(DAY, 30 * DAY)[0], tx)  # the sample is deterministic


def test_window_is_bounded_by_rows_and_by_age() -> None:
    window = LabelWindow(1, LabelWindow.Params(legit_sample=1.0, max_rows=250))
    for day in range(1, 6):
        window.add(np.full((100, 1), float(day)), np.zeros(100, bool), np.ones(100), day * DAY)
    assert window.rows == 250
    x, _, _ = window.training_set(5 * DAY, 30 * DAY)
    assert x[:, 0].tolist() == [3.0] * 50 + [4.0] * 100 + [5.0] * 100  # the oldest rows went first
    x, _, _ = window.training_set(5 * DAY, 1.5 * DAY)
    assert set(x[:, 0].tolist()) == {4.0, 5.0}  # labels known too long ago are left out


# -- the gradient-boosted trees -------------------------------------------------------------


def _trees(background: bool = True, **changes: object) -> BoostedTrees:
    params = replace(TreesParams(retrain_every_s=DAY, install_after_s=DAY / 2, min_frauds=10, rounds=20,
                                 legit_sample=1.0, background=background), **changes)
    return BoostedTrees(4, params)


def test_trees_train_at_a_tick_and_score_from_the_due_tick_on_learning_an_interaction() -> None:
    rng = np.random.default_rng(1)
    trees = _trees()
    x, y = _xor_rows(rng, 3000)
    trees.learn(x, y, np.ones(len(y)), DAY)
    assert not trees.tick(DAY) and not trees.ready  # training started, not installed
    assert not trees.tick(DAY + 3600) and not trees.ready  # not due yet: half a day after the start
    assert trees.tick(DAY + DAY / 2) and trees.ready and trees.version == "gbm-1.1"
    test, truth = _xor_rows(rng, 2000)
    assert roc_auc(truth, trees.predict(test)) > 0.95  # a linear model is at 0.5 on XOR


def test_trees_are_deterministic_whatever_the_thread_and_survive_a_snapshot_mid_training() -> None:
    x, y = _xor_rows(np.random.default_rng(2), 3000)
    inline, threaded = _trees(background=False), _trees()
    for trees in (inline, threaded):
        trees.learn(x, y, np.ones(len(y)), DAY)
        trees.tick(DAY)
    restored = pickle.loads(pickle.dumps(threaded))  # waits for the training in flight
    assert not restored.ready
    for trees in (inline, restored):
        assert trees.tick(2 * DAY)
    assert inline.model == restored.model
    assert np.array_equal(inline.predict(x[:100]), restored.predict(x[:100]))


def test_trees_wait_for_enough_frauds_and_retrain_on_schedule() -> None:
    trees = _trees(min_frauds=50)
    x, y = _xor_rows(np.random.default_rng(3), 60)
    trees.learn(x, y, np.ones(len(y)), DAY)
    trees.tick(DAY)
    assert trees._training is None  # too few frauds to train on
    more, labels = _xor_rows(np.random.default_rng(4), 2000)
    trees.learn(more, labels, np.ones(len(labels)), 2 * DAY)
    trees.tick(2 * DAY)
    assert trees.tick(2.5 * DAY) and trees.installed == 1
    assert not trees.tick(3 * DAY) and trees._training is not None  # the next one, a day after the first
    assert trees.tick(3.5 * DAY) and trees.installed == 2


# -- prequential figures and promotion ------------------------------------------------------


def test_prequential_figures_are_those_of_the_last_labels() -> None:
    rng = np.random.default_rng(5)
    evaluation = Prequential((LINEAR, TREES), size=1000)
    scores, labels = rng.random((2500, 2)), rng.random(2500) < 0.1
    scores[:, 1] += labels  # the second model separates better
    for lo in range(0, 2500, 300):
        evaluation.add(scores[lo:lo + 300], labels[lo:lo + 300])
    linear, trees = evaluation.figures({LINEAR: "l", TREES: "t"})
    y, s = labels[-1000:], scores[-1000:]
    assert (linear.labels, linear.frauds) == (1000, int(y.sum()))
    assert linear.auc == round(roc_auc(y, s[:, 0]), 6) and trees.ap == round(average_precision(y, s[:, 1]), 6)
    assert evaluation.seen == 2500


def _evaluate(selection: ChampionChallenger, day: int, linear: float, trees: float,
              labels: int = 10_000) -> str | None:
    rng = np.random.default_rng(day)
    y = rng.random(labels) < 0.05
    noise = rng.random((labels, 2))
    scores = np.column_stack([np.where(y, linear, 0.0) + noise[:, 0], np.where(y, trees, 0.0) + noise[:, 1]])
    selection.observe(scores, y)
    change = selection.evaluate(day * DAY, {LINEAR: "fraud-1.x", TREES: "gbm-1.y"}, {LINEAR: True, TREES: True})
    return change.to_model if change is not None else None


def test_a_challenger_is_promoted_after_leading_patience_evaluations_and_not_before() -> None:
    selection = ChampionChallenger(ChampionParams(window_labels=10_000, min_labels=1000, min_frauds=50,
                                                  patience=3), (LINEAR, TREES))
    assert _evaluate(selection, 1, 0.5, 0.9) is None
    assert _evaluate(selection, 2, 0.5, 0.9) is None
    assert _evaluate(selection, 3, 0.5, 0.5) is None  # a tie breaks the streak
    assert _evaluate(selection, 4, 0.5, 0.9) is None
    assert _evaluate(selection, 5, 0.5, 0.9) is None
    assert _evaluate(selection, 6, 0.5, 0.9) == TREES and selection.champion == TREES
    # Hysteresis: the old champion must lead as long to come back.
    assert _evaluate(selection, 7, 0.9, 0.5) is None and selection.champion == TREES


def test_no_promotion_without_enough_labels_or_when_automatic_promotion_is_off() -> None:
    few = ChampionChallenger(ChampionParams(min_labels=50_000, patience=1), (LINEAR, TREES))
    assert _evaluate(few, 1, 0.5, 0.9) is None
    manual = ChampionChallenger(ChampionParams(auto_promote=False, patience=1), (LINEAR, TREES))
    assert _evaluate(manual, 1, 0.5, 0.9) is None and manual.champion == LINEAR


def test_a_changed_configured_champion_is_applied_and_reported() -> None:
    selection = ChampionChallenger(ChampionParams(auto_promote=False), (LINEAR, TREES))
    selection.params = ChampionParams(champion=TREES, auto_promote=False)  # a restart with a new config
    change = selection.evaluate(DAY, {LINEAR: "l", TREES: "t"}, {LINEAR: True, TREES: True})
    assert change is not None and (change.action, change.from_model, change.to_model) == ("configured", LINEAR, TREES)


# -- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReplayPaths]:
    work = tmp_path_factory.mktemp("challenger")
    events = work / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in xor_events()))
    settings = load_settings()
    fraud = quick_challenger(settings.fraud)
    audit = replace(settings.audit, file=str(work / "audit.jsonl"), key_file=str(audit_key_file(work)))
    paths = ReplayPaths(events, work / "alerts.jsonl", work / "scores.jsonl", None, work / "dead.jsonl",
                        None, work / "models.jsonl")
    run_replay(replace(settings, fraud=fraud, audit=audit), paths)
    return work, paths


def _jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_the_better_challenger_is_promoted_audited_and_then_decides_alerts(
        promoted: tuple[Path, ReplayPaths]) -> None:
    work, paths = promoted
    assert paths.models is not None and paths.alerts is not None and paths.scores is not None
    records = _jsonl(paths.models)
    changes = [r for r in records if r["kind"] == "model_change"]
    assert [(c["action"], c["from_model"], c["to_model"]) for c in changes] == [("promoted", LINEAR, TREES)]
    change = changes[0]
    figures = {m["model"]: m for m in change["models"]}
    assert figures[TREES]["ap"] > figures[LINEAR]["ap"] + 0.01 and figures[TREES]["labels"] >= 300
    reports = [r for r in records if r["kind"] == "model_report"]
    assert reports[-1]["champion"] == TREES and reports[0]["champion"] == LINEAR
    # The audit log holds the change, signed and chained.
    audit = _jsonl(work / "audit.jsonl")
    audited = [e for e in audit if e["kind"] == "model_change"]
    assert [e["id"] for e in audited] == [change["change_id"]]
    verify_file(work / "audit.jsonl", AuditKeys.load(work / "audit-key.toml"))
    # After the promotion the trees' score is the fraud score, and alerts name their version.
    after = [s for s in _jsonl(paths.scores) if s["ts"] > change["as_of"]]
    assert after and all(s["fraud_score"] == s["score_gbm"] for s in after)
    late_alerts = [a for a in _jsonl(paths.alerts) if a["event_ts"] > change["as_of"] and a["type"] != "churn_risk"]
    assert late_alerts and all(a["model_version"].startswith("gbm-1.") for a in late_alerts)
    assert any(r["code"].startswith("model:") for a in late_alerts for r in a["reasons"])


def test_scores_before_the_first_training_are_the_linear_models_for_both() -> None:
    trees = BoostedTrees(4, TreesParams())
    assert not trees.ready and trees.version == "gbm-1.none"


def test_auc_and_average_precision_from_one_sort_equal_the_definitions() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        n = int(rng.integers(1, 200))
        y, s = rng.random(n) < 0.2, np.round(rng.random(n), int(rng.integers(1, 4)))  # many ties
        auc, ap = auc_and_average_precision(y, s)
        assert np.allclose([auc, ap], [roc_auc(y, s), average_precision(y, s)], equal_nan=True, atol=1e-12)
