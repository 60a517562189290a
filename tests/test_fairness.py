"""Fair recommendations (``detectors.fairness``): the group figures and the disparity check,
their counting inside next-best action, the ``fairness_drift`` alert from a replay through
the engine, the Prometheus metrics, and the constraint's effect on a small closed loop."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from bench.fairness import Settling, Switch, figures, run_one, settling
from config.settings import load_settings
from detectors.customer import Summary
from detectors.fairness import (
    DIMENSIONS,
    FairnessParams,
    FairnessTracker,
    GroupFigures,
    disparities,
    groups_of,
)
from detectors.nba import Action, CustomerFacts, NBAParams, NBAState, NextBestAction, NextBestActions
from engine.config import EngineConfig
from engine.shard import Shard, process_all
from ops.metrics import EngineMetrics
from schemas.events import Feedback, Transaction, parse_event
from schemas.outputs import Alert, Prompt
from simulator import SimulatorConfig
from tests.conftest import replay

T0 = 1767225600.0  # 2026-01-01T00:00:00Z, a Thursday
DAY = 86400.0
CATALOGUE = (Action("offer_fund", "product", "fund", 3, "F1"), Action("rm_call", "service", "relationship"))


def _ts(t: float) -> str:
    from schemas.outputs import format_ts
    return format_ts(t)


# -- the figures and the check -----------------------------------------------------------------

def test_groups_are_bounded_values_never_ids() -> None:
    p = FairnessParams()
    assert groups_of("mass", 1990, "female", "1", T0, p) == ("mass", "30-44", "female", "1")
    assert groups_of("vip-c123", None, "", "9", T0, p) == ("other", "unknown", "unknown", "other")
    assert groups_of(None, 2010, None, None, T0, p) == ("unknown", "<30", "unknown", "unknown")
    assert groups_of("private", 1966, "male", "4", T0, p)[1] == "60+"  # 2026 - 1966 = 60
    for dimension in DIMENSIONS:
        assert len(p.values(dimension)) <= 6


def test_the_check_follows_the_four_fifths_rule_with_minimum_counts() -> None:
    p = FairnessParams(min_customers=50, min_prompts=40)
    groups = [GroupFigures("segment", "mass", 100, 80, 20, 8), GroupFigures("segment", "affluent", 100, 100, 30, 10),
              GroupFigures("segment", "private", 49, 5, 0, 0),  # too few customers: not judged
              GroupFigures("segment", "unknown", 500, 0, 0, 0)]  # never judged
    found = {(d.value, d.metric): d for d in disparities(groups, p)}
    assert set(found) == {("mass", m) for m in ("exposure", "acceptance", "conversion")} | {
        ("affluent", m) for m in ("exposure", "acceptance", "conversion")}
    assert found[("mass", "exposure")].ratio == pytest.approx(0.8)
    assert not found[("mass", "exposure")].breached  # 0.8 is not under the four-fifths rule
    assert found[("mass", "acceptance")].ratio == pytest.approx(0.25 / 0.3)
    assert found[("mass", "conversion")].ratio == pytest.approx(1.0)  # 8 / 80 and 10 / 100
    strict = disparities(groups, replace(p, threshold=0.9))
    assert [(d.value, d.metric) for d in strict if d.breached] == [("mass", "exposure"), ("mass", "acceptance")]
    assert disparities([groups[0]], p) == ()  # one judged group: nothing to compare with
    assert disparities([GroupFigures("gender", "female", 60, 0, 0, 0), GroupFigures("gender", "male", 60, 0, 0, 0)],
                       p) == ()  # nobody served: no best-served group


def test_the_tracker_judges_each_window_of_event_time_once_and_deterministically() -> None:
    p = FairnessParams(min_customers=2, min_prompts=2, floor=0.8, boost=0.25)
    a, b = ("mass", "30-44", "female", "1"), ("mass", "30-44", "male", "1")

    def run() -> FairnessTracker:
        tracker = FairnessTracker(p)
        tracker.advance(T0)
        for _ in range(3):
            tracker.eligible(a)
            tracker.prompted(a)
            tracker.eligible(b)
        tracker.prompted(b)
        tracker.accepted(a)
        tracker.advance(T0 + DAY)  # same window: nothing judged
        assert tracker.last is None
        tracker.advance(T0 + 7 * DAY, "e9", _ts(T0 + 7 * DAY))
        return tracker

    tracker = run()
    check = tracker.last
    assert check is not None and tracker.checks == [check]
    assert [(d.dimension, d.value, d.metric) for d in check.breaches] == [("gender", "male", "exposure")]
    assert check.closed_by[0] == "e9" and check.end - check.start == 7 * DAY
    # the constraint boosts the under-served: by gain * (floor - ratio) at the first check
    assert tracker.boost(b) == pytest.approx(0.2 * (0.8 - 1 / 3)) and tracker.boost(a) == 0.0
    assert tracker.counts == {}  # a new window starts empty
    checks, counts = tracker.drain()
    assert checks == [check] and counts[("gender", "male", "eligible")] == 3 and tracker.checks == []
    assert run().last == check  # deterministic
    tracker.advance(T0)  # event time never goes back
    assert tracker.window == tracker.window_of(T0 + 7 * DAY)
    assert len(pickle.dumps(tracker)) < 20_000


def test_params_are_validated() -> None:
    for bad in ({"threshold": 0.0}, {"window_days": 0.0}, {"min_customers": 0}, {"floor": 1.5}, {"boost": -1.0},
                {"gain": 0.0}, {"age_edges": (60, 30)}):
        with pytest.raises(ValueError):
            FairnessParams(**bad)  # type: ignore[arg-type]


# -- the constraint as a controller ----------------------------------------------------------------

SERVED, UNDER = ("mass", "30-44", "female", "1"), ("mass", "30-44", "male", "1")


def _plant(tracker: FairnessTracker, response: Callable[[float], float], windows: int, start: int = 0) -> list[float]:
    """``windows`` windows (from the ``start``-th) of a synthetic plant: 100 customers per gender;
    every female one prompted, a share ``response(boost)`` of the male ones; the male exposure
    ratio per window."""
    ratios = []
    tracker.advance(T0 + start * 7 * DAY)
    for week in range(start + 1, start + windows + 1):
        served = round(100 * response(tracker.boost(UNDER)))
        for i in range(100):
            tracker.eligible(SERVED)
            tracker.prompted(SERVED)
            tracker.eligible(UNDER)
            if i < served:
                tracker.prompted(UNDER)
        tracker.advance(T0 + week * 7 * DAY)
        assert tracker.last is not None
        ratios.append(next(d.ratio for d in tracker.last.disparities if d.value == "male" and d.metric == "exposure"))
    return ratios


def _biased(boost: float) -> float:
    """A policy under-serving the group (a fifth of the others' exposure), the boost lifting it."""
    return min(1.0, 0.2 + 4.0 * boost)


CONSTRAINT = FairnessParams(min_customers=20, min_prompts=20, floor=0.85, boost=0.3, gain=0.2)


def test_the_constraint_settles_a_biased_group_at_the_floor() -> None:
    ratios = _plant(FairnessTracker(CONSTRAINT), _biased, 16)
    assert ratios[0] == pytest.approx(0.2)  # the bias, before any boost
    tail = ratios[-8:]
    # The switch it replaced boosted by 0.3 after a window under the floor and by 0 after one
    # above: 0.2, 1.0, 0.2, 1.0, ... here, half of the windows breaching the four-fifths rule.
    assert max(tail) - min(tail) <= 0.02  # settled: no swing
    assert all(r >= CONSTRAINT.threshold for r in tail)
    assert sum(tail) / len(tail) == pytest.approx(CONSTRAINT.floor, abs=0.02)
    assert all(r >= CONSTRAINT.threshold for r in ratios[3:])  # within three windows


def test_the_rules_it_replaced_swing_on_the_same_plant() -> None:
    for margin in (0.0, 0.1):  # the switch, and a hysteresis (bench.fairness compares them)
        ratios = _plant(Switch(CONSTRAINT, margin), _biased, 16)
        assert ratios[-4:] == pytest.approx([0.2, 1.0, 0.2, 1.0])
        assert settling(ratios, CONSTRAINT.threshold) == Settling(0.4, 0.6, 4, None)
    assert settling(_plant(FairnessTracker(CONSTRAINT), _biased, 16), CONSTRAINT.threshold) == Settling(
        0.0, 0.85, 0, 2)


def test_the_boost_is_bounded_and_released() -> None:
    tracker = FairnessTracker(CONSTRAINT)
    _plant(tracker, lambda boost: 0.1, 12)  # a group no boost lifts
    assert tracker.boost(UNDER) == CONSTRAINT.boost  # saturated at the configured most, never above
    assert tracker.boost(SERVED) == 0.0 and set(tracker.boosts) == {"gender=male"}
    ratios = _plant(tracker, lambda boost: 1.0, 3, start=12)  # the bias gone: fully served again
    assert ratios == [1.0, 1.0, 1.0]
    assert tracker.boost(UNDER) == pytest.approx(CONSTRAINT.boost - 3 * CONSTRAINT.gain * 0.15)  # unwinds
    _plant(tracker, lambda boost: 1.0, 10, start=15)
    assert tracker.boosts == {}  # and is forgotten at 0: one entry per boosted group at most
    assert len(pickle.dumps(tracker)) < 20_000


def test_the_constraint_is_deterministic_across_a_restore() -> None:
    live = FairnessTracker(CONSTRAINT)
    ratios = _plant(live, _biased, 12)
    first = FairnessTracker(CONSTRAINT)
    _plant(first, _biased, 5)
    restored = pickle.loads(pickle.dumps(first))  # recovery: the boosts travel with the counts
    assert restored.boosts == first.boosts
    assert _plant(restored, _biased, 7, start=5) == ratios[5:] and restored.boosts == live.boosts


def test_a_tracker_pickled_before_the_controller_restores() -> None:
    tracker = FairnessTracker(CONSTRAINT)
    tracker.advance(T0)
    del tracker.boosts  # what a tracker pickled before the controller existed lacks
    old = pickle.loads(pickle.dumps(tracker))
    assert old.boost(UNDER) == 0.0  # its constraint starts again from no boost
    assert _plant(old, _biased, 16)[-1] == pytest.approx(CONSTRAINT.floor, abs=0.02)


# -- inside next-best action --------------------------------------------------------------------

def _credit(i: int, customer: str, t: float) -> Transaction:
    return Transaction(f"e{i}", _ts(t), t, customer, 80_000.0, direction="credit")


def _summary(traits: tuple[int | None, str | None, str | None], opt_out: bool = False,
             risk: int | None = 3) -> Summary:
    return Summary("rm1", "mass", risk, opt_out, T0, T0, T0 - DAY, None, 1, 0, traits)


def test_exposure_acceptance_and_conversion_are_counted_per_group() -> None:
    nba = NextBestActions(CATALOGUE, NBAParams(seed=1))
    tracker = nba.policy.fairness
    assert tracker is not None
    female, male = _summary((1990, "female", "1")), _summary((1950, "male", "2"))
    p1 = nba.on_event(_credit(1, "c1", T0), female, False)
    nba.on_event(_credit(2, "c1", T0 + 3600), female, False)  # a second trigger moment: counted once
    p3 = nba.on_event(_credit(3, "c2", T0), male, False)
    assert nba.on_event(_credit(4, "c3", T0), _summary((1990, "female", "1"), opt_out=True), False) is None
    assert p1 is not None and p3 is not None
    nba.on_event(Feedback("f1", _ts(T0 + 7200), T0 + 7200, "c1", "nba_accepted", ref_prompt_id=p1.prompt_id),
                 female, False)
    nba.on_event(Feedback("f2", _ts(T0 + 9000), T0 + 9000, "c1", "nba_converted", ref_prompt_id=p1.prompt_id),
                 female, False)
    nba.on_event(Feedback("f3", _ts(T0 + 7200), T0 + 7200, "c2", "nba_converted", ref_prompt_id=p3.prompt_id),
                 male, False)
    assert tracker.counts[("gender", "female")] == [1, 2, 1, 1]  # opted-out c3 is not eligible
    assert tracker.counts[("gender", "male")] == [1, 1, 1, 1]  # a conversion implies acceptance
    assert tracker.counts[("age_band", "60+")] == [1, 1, 1, 1]


def test_tracking_off_changes_no_prompt() -> None:
    def prompts(enabled: bool) -> list[Prompt | None]:
        nba = NextBestActions(CATALOGUE, NBAParams(seed=1, fairness=FairnessParams(enabled=enabled)))
        return [nba.on_event(_credit(i, f"c{i % 7}", T0 + i * 3600), _summary((1980, "male", "1")), False)
                for i in range(40)]

    assert prompts(True) == prompts(False)


def test_the_constraint_boosts_an_under_served_group_through_the_score_gate() -> None:
    fair = FairnessParams(floor=0.8, boost=0.5)
    nba = NextBestAction(CATALOGUE, NBAParams(seed=1, alpha=0.0, min_score=0.2, fairness=fair))
    facts = CustomerFacts(risk_level=3, segment="mass", rm_id="rm1", groups=("mass", "30-44", "male", "1"))
    trigger = nba.trigger_of(NBAState(), _credit(1, "c1", T0))
    assert trigger is not None
    assert nba.decide(NBAState(), facts, trigger) is None  # an untrained bandit expects 0 < 0.2
    assert nba.fairness is not None
    nba.fairness.boosts = {"gender=male": 0.5}
    assert nba.decide(NBAState(), facts, trigger) is not None  # 0 + 0.5 >= 0.2
    other = replace(facts, groups=("mass", "30-44", "female", "1"))
    assert nba.decide(NBAState(), other, trigger) is None


# -- through the engine -------------------------------------------------------------------------

def under_served_events(t0: float = T0, n: int = 24) -> list[dict[str, object]]:
    """Female customers with a risk grade, male ones without (no product is suitable for
    them), from ``t0``: at a large credit each, only the female ones can be prompted; a week
    later an event closes the window."""
    lines: list[dict[str, object]] = []
    for i in range(n):
        gender = "female" if i % 2 == 0 else "male"
        profile: dict[str, object] = {"kind": "profile", "event_id": f"p{i}", "ts": _ts(t0 + i),
                                      "customer_id": f"c{i}", "rm_id": "rm1", "segment": "mass", "birth_year": 1985,
                                      "gender": gender, "city_tier": "1"}
        if gender == "female":
            profile["risk_level"] = 4
        lines.append(profile)
    for i in range(n):
        lines.append({"kind": "transaction", "event_id": f"t{i}", "ts": _ts(t0 + DAY + 60 * i), "customer_id": f"c{i}",
                      "amount": 90_000.0, "direction": "credit", "txn_type": "salary"})
    lines.append({"kind": "transaction", "event_id": "close", "ts": _ts(t0 + 8 * DAY), "customer_id": "c0",
                  "amount": 90_000.0, "direction": "credit"})
    return lines


def _under_served_stream(path: Path, n: int = 24) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in under_served_events(T0, n)) + b"\n")
    return path


def product_catalogue(path: Path) -> Path:
    path.write_text('[[action]]\nid = "offer_fund"\nkind = "product"\ncategory = "fund"\nrisk = 2\n'
                    'product_id = "F1"\n', encoding="utf-8")
    return path


def test_a_replay_that_under_serves_a_group_raises_fairness_drift(tmp_path: Path) -> None:
    events = _under_served_stream(tmp_path / "events.jsonl")
    settings = load_settings()
    fairness = replace(settings.nba.fairness, min_customers=5)
    settings = replace(settings, nba=replace(settings.nba, catalogue=str(product_catalogue(tmp_path / "a.toml")),
                                             fairness=fairness))
    alerts = replay(events, tmp_path / "one", settings).records("alerts")
    drift = [a for a in alerts if a["type"] == "fairness_drift"]
    assert len(drift) == 1, alerts
    alert = drift[0]
    assert alert["customer_id"] == "*" and alert["rm_id"] is None and alert["event_id"] == "close"
    assert alert["severity"] == "medium" and alert["score"] == 1.0
    [reason] = alert["reasons"]
    assert reason["args"]["dimension"] == "gender" and reason["args"]["group"] == "male"
    assert reason["args"]["metric"] == "exposure" and reason["value"] == 0.0
    assert "gender male: exposure 0.000 is 0.00 of the best-served group's 1.000" in reason["text"]
    again = replay(events, tmp_path / "two", settings, workers=2).records("alerts")
    assert [a for a in again if a["type"] == "fairness_drift"] == drift  # replay is deterministic


def test_the_shard_reports_fairness_to_the_metrics_registry(tmp_path: Path) -> None:
    from config.actions import load_actions
    from detectors.customer import ViewParams
    from detectors.fraud import FraudParams
    from detectors.profile import ProfileParams
    from detectors.rules import RuleParams

    nba = NBAParams(fairness=FairnessParams(min_customers=5))
    config = EngineConfig(ProfileParams(), RuleParams(), FraudParams(), ViewParams(), clock=str, nba=nba,
                          actions=load_actions(product_catalogue(tmp_path / "a.toml")))
    events = [parse_event(line) for line in _under_served_stream(tmp_path / "e.jsonl").read_bytes().splitlines()]
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, ("replay",))
    metrics.expect_fairness({d: nba.fairness.values(d) for d in DIMENSIONS})
    assert registry.get_sample_value("crm_engine_nba_fairness_total",
                                     {"dimension": "city_tier", "group": "4", "outcome": "converted"}) == 0.0
    shard = Shard(config)
    records = [r for e in events for r in shard.process([e], observer=metrics)]
    assert [r.type for r in records if isinstance(r, Alert)] == ["fairness_drift"]

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("crm_engine_nba_fairness_total", dimension="gender", group="male", outcome="eligible") == 12
    assert value("crm_engine_nba_fairness_total", dimension="gender", group="male", outcome="prompted") == 0
    assert value("crm_engine_nba_fairness_total", dimension="gender", group="female",
                 outcome="prompted") == 12 + 1  # and the closing event, in the next window
    assert value("crm_engine_nba_fairness_ratio", dimension="gender", group="male", metric="exposure") == 0.0
    assert value("crm_engine_nba_fairness_breaches", dimension="gender", metric="exposure") == 1
    assert value("crm_engine_nba_fairness_breaches", dimension="segment", metric="exposure") == 0
    assert value("crm_engine_alerts_total", type="fairness_drift", severity="medium") is not None
    # one shard, whole batches or one event at a time: the same alerts
    again = process_all(Shard(config), events)
    assert [r for r in again if isinstance(r, Alert)] == [r for r in records if isinstance(r, Alert)]


def test_a_drift_alert_goes_to_the_alert_stream_only_in_redis() -> None:
    from detectors.fairness import Disparity, FairnessCheck
    from engine.records import fairness_alerts
    from schemas.redis_keys import RedisKeys
    from sinks.redis import RedisLimits, default_route

    found = FairnessCheck(T0, T0 + 7 * DAY, (), (Disparity("gender", "male", "exposure", 0.2, 1.0, 0.2, True),),
                          ("e1", _ts(T0 + 7 * DAY), T0 + 7 * DAY))
    [alert] = fairness_alerts(found, 0.8, _ts(T0 + 7 * DAY), "zh-CN")
    assert alert.reasons[0].text == "性别 male：触达率 0.200，为最优群体 1.000 的 0.20 倍（阈值 0.80）"
    keys = RedisKeys("t:")
    route = default_route(alert, RedisLimits(), keys)
    assert route is not None and [w.stream for w in route.writes] == [keys.alerts()]  # no customer "*" hash


# -- the constraint in closed loop ---------------------------------------------------------------

def test_the_constraint_corrects_an_injected_bias_in_closed_loop() -> None:
    settings = load_settings()
    config = SimulatorConfig(customers=120, days=42, seed=7)
    fairness = replace(settings.nba.fairness, min_customers=5, boost=0.3)

    def run(floor: float) -> float:
        nba = replace(settings.nba, enabled=True, min_score=0.3, fairness=replace(fairness, floor=floor))
        result = run_one(replace(settings, nba=nba), config, "biased", "affluent", 0.3)
        return figures(result, config.start_ms / 1000.0, 14.0).ratio["affluent"]

    biased, corrected = run(0.0), run(0.8)
    assert biased < 0.8  # the figures see the bias
    assert corrected > biased + 0.2  # and the constraint corrects much of it (0.38 -> 0.78)
