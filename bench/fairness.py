"""Fair recommendations on the closed loop: the fairness figures see an injected bias, and the
constraint corrects it, at a measured conversion cost; the engine's constraint (an integral
controller) against the on/off rule it replaced and a hysteresis.

    python -m bench.fairness [--customers 500] [--days 150] [--seed 7] [--segment affluent]
                             [--penalty 0.3] [--min-score 0.1] [--floor 0.85] [--boost 0.3]
                             [--gain 0.2] [--margin 0.1] [--last 8] [--jobs 1]

The engine's exact per-event logic runs in closed loop over the simulator (``bench.nba_loop``:
every prompt answered by the simulated customers, the bandit learning from the answers), with
a score gate (``NBAParams.min_score``: a prompt only when the chosen action's upper confidence
bound reaches it) in every run. Six runs on the same simulation:

- ``fair``: the engine as configured;
- ``biased``: the injected bias, a policy that understates the expected reward of one
  segment's customers by ``penalty`` (``UnderServe``: a scoring model biased against them), so
  that the gate lets fewer of their prompts through;
- ``fair + integral`` and ``biased + integral``: the same with the engine's fairness constraint
  on (``[nba.fairness] floor``: at each window's check a group's boost to its customers' prompt
  scores moves by ``gain`` times its exposure ratio's shortfall from the floor, within
  ``[0, boost]``);
- ``biased + switch``: the rule it replaced (``Switch``): ``boost`` for the window after one in
  which the group's ratio was under the floor, nothing otherwise;
- ``biased + hysteresis``: the same, a boosted group keeping its boost until its ratio reaches
  ``floor + margin``.

Reported per run, over the windows judged from ``--from-day`` on (pooled counts): each
segment's exposure (prompts per eligible customer, per window) and its ratio to the best
segment's, the windows in which the engine raised ``fairness_drift`` for a segment's exposure,
prompts and the conversion rate (conversions / prompts) and conversions per
eligible customer-window; then the biased segment's exposure ratio in each window and how it
settles: over the last ``--last`` windows half its range, its mean and the windows under the
threshold, and the windows until it stays within 0.1 of that mean.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

from bench.nba_loop import LoopResult, _Loop
from config.settings import Settings, load_settings
from detectors.fairness import FairnessCheck, FairnessParams, FairnessTracker
from detectors.nba import SEGMENTS, Policy
from flows.items import Sequenced
from simulator import SimulatorConfig

DAY = 86400.0


class UnderServe:
    """The injected bias: ``inner``'s estimates, ``penalty`` lower for the customers of
    ``segment`` (read from the context vector's one-hot segment)."""

    def __init__(self, inner: Policy, segment: str, penalty: float) -> None:
        self.inner = inner
        self.column = 1 + SEGMENTS.index(segment)
        self.penalty = penalty

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]:
        arm, mean, width = self.inner.pull(arms, x)
        return arm, mean - (self.penalty if x[self.column] else 0.0), width

    def update(self, arm: str, x: Sequence[float], reward: float) -> None:
        self.inner.update(arm, x, reward)

    def revise(self, arm: str, x: Sequence[float], old: float, new: float) -> None:
        self.inner.revise(arm, x, old, new)


@dataclass
class FairRun:
    """One run: the loop's result, every fairness window judged, the drift alerts."""

    name: str
    loop: LoopResult
    checks: list[FairnessCheck] = field(default_factory=list)


class Switch(FairnessTracker):
    """The former constraint, for comparison: ``boost`` for the window after one in which the
    group's exposure ratio was under ``floor``, nothing otherwise. With ``margin`` > 0, a
    hysteresis: a boosted group keeps its boost until its ratio reaches ``floor + margin``."""

    def __init__(self, params: FairnessParams, margin: float = 0.0) -> None:
        super().__init__(params)
        self.margin = margin

    def control(self, check: FairnessCheck) -> dict[str, float]:
        p, out = self.params, {}
        for d in check.disparities:
            group = f"{d.dimension}={d.value}"
            on = group in self.boosts and d.ratio < p.floor + self.margin
            if d.metric == "exposure" and (d.ratio < p.floor or on):
                out[group] = p.boost
        return out


class _FairLoop(_Loop):
    """The closed loop, keeping every judged window and ``fairness_drift`` alert."""

    def __init__(self, settings: Settings, config: SimulatorConfig, name: str, segment: str | None,
                 penalty: float, rule: str = "integral", margin: float = 0.0) -> None:
        super().__init__(settings, config, "bandit")
        nba = self.shard.nba
        assert nba is not None and nba.policy.fairness is not None
        if rule != "integral":  # the switch or the hysteresis
            nba.policy.fairness = Switch(nba.policy.fairness.params, margin if rule == "hysteresis" else 0.0)
        self.tracker = nba.policy.fairness
        if segment is not None:
            nba.policy.policy = UnderServe(nba.policy.policy, segment, penalty)
        self.run_ = FairRun(name, self.result)

    def _process(self, batch: list[Sequenced]) -> None:
        before = self.tracker.last  # a batch spans minutes of event time: one window closes at most
        super()._process(batch)
        if self.tracker.last is not before and self.tracker.last is not None:
            self.run_.checks.append(self.tracker.last)


def run_one(settings: Settings, config: SimulatorConfig, name: str, segment: str | None,
            penalty: float, rule: str = "integral", margin: float = 0.0) -> FairRun:
    """One closed-loop run of the bandit, under-serving ``segment`` by ``penalty`` if given,
    the constraint (if ``settings`` turn it on) by ``rule``: ``integral`` (the engine's),
    ``switch`` or ``hysteresis`` (:class:`Switch`)."""
    loop = _FairLoop(settings, config, name, segment, penalty, rule, margin)
    loop.run()
    return loop.run_


@dataclass(frozen=True)
class Figures:
    """A run's figures over the windows from ``from_day``."""

    exposure: dict[str, float]  # segment -> prompts per eligible customer-window
    ratio: dict[str, float]  # segment -> exposure / the best segment's
    eligible: dict[str, int]
    drift_windows: int  # windows with a fairness_drift alert for a segment's exposure
    windows: int
    prompts: int
    conversion: float  # conversions / prompts
    conversions_per_eligible: float


def figures(run: FairRun, start_t: float, from_day: float) -> Figures:
    since = start_t + from_day * DAY
    checks = [c for c in run.checks if c.start >= since]
    eligible = dict.fromkeys(SEGMENTS, 0)
    prompted = dict.fromkeys(SEGMENTS, 0)
    converted = 0
    for check in checks:
        for g in check.groups:
            if g.dimension == "segment" and g.value in eligible:
                eligible[g.value] += g.eligible
                prompted[g.value] += g.prompted
                converted += g.converted
    exposure = {s: prompted[s] / eligible[s] if eligible[s] else 0.0 for s in SEGMENTS}
    best = max(exposure.values()) or 1.0
    # The engine raises fairness_drift for a dimension exactly when its window has a breach there.
    drift_windows = sum(any(d.dimension == "segment" and d.metric == "exposure" for d in c.breaches)
                        for c in checks)
    prompts = sum(prompted.values())
    return Figures(exposure, {s: exposure[s] / best for s in SEGMENTS}, eligible, drift_windows, len(checks),
                   prompts, converted / prompts if prompts else 0.0,
                   converted / sum(eligible.values()) if eligible else 0.0)


def ratio_series(run: FairRun, segment: str) -> list[float | None]:
    """``segment``'s exposure ratio at each judged window, in order (None: not judged)."""
    return [next((d.ratio for d in check.disparities
                  if d.dimension == "segment" and d.metric == "exposure" and d.value == segment), None)
            for check in run.checks]


@dataclass(frozen=True)
class Settling:
    """How a ratio series settles, over its last ``last`` judged windows."""

    amplitude: float  # half the range
    mean: float
    under: int  # windows under the threshold
    settle: int | None  # windows until the ratio stays within ``band`` of ``mean`` (None: never)


def settling(series: Sequence[float | None], threshold: float, last: int = 8, band: float = 0.1) -> Settling:
    """The settling figures of a ratio series (None: a window not judged).

    >>> settling([0.1, 1.0, 0.1, 1.0, 0.85, 0.86, 0.84], 0.8, last=3)
    Settling(amplitude=0.01, mean=0.85, under=0, settle=4)
    """
    judged = [r for r in series if r is not None]
    tail = judged[-last:]
    mean = sum(tail) / len(tail) if tail else 0.0
    settle: int | None = None
    for i, r in enumerate(series):
        if r is not None and abs(r - mean) > band:
            settle = None
        elif settle is None:
            settle = i
    return Settling(round((max(tail) - min(tail)) / 2, 4) if tail else 0.0, round(mean, 4),
                    sum(r < threshold for r in tail), settle)


# (name, biased, the constraint's rule or None: off)
RUNS = (("fair", False, None), ("biased", True, None), ("fair + integral", False, "integral"),
        ("biased + switch", True, "switch"), ("biased + hysteresis", True, "hysteresis"),
        ("biased + integral", True, "integral"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--segment", default="affluent", choices=SEGMENTS, help="the segment the bias under-serves")
    parser.add_argument("--penalty", type=float, default=0.3, help="how much the bias understates its rewards")
    parser.add_argument("--min-score", type=float, default=0.1, help="the score gate of every run")
    parser.add_argument("--floor", type=float, default=0.85, help="the constraint's exposure floor (its target)")
    parser.add_argument("--boost", type=float, default=0.3, help="the constraint's largest boost")
    parser.add_argument("--gain", type=float, default=0.2, help="the integral constraint's gain")
    parser.add_argument("--margin", type=float, default=0.1, help="the hysteresis: off from floor + margin")
    parser.add_argument("--last", type=int, default=8, help="windows the settling figures are taken over")
    parser.add_argument("--runs", default=",".join(name for name, _, _ in RUNS),
                        help="the runs to make, by name, comma-separated (default: all)")
    parser.add_argument("--window-days", type=float, default=7.0)
    parser.add_argument("--min-customers", type=int, default=20)
    parser.add_argument("--from-day", type=float, default=30.0, help="report the windows from this day on")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, in processes")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = load_settings()
    config = SimulatorConfig(customers=args.customers, days=args.days, seed=args.seed)
    base = replace(settings.nba.fairness, window_days=args.window_days, min_customers=args.min_customers,
                   boost=args.boost, gain=args.gain)
    jobs = []
    chosen = {name.strip() for name in args.runs.split(",")}
    for name, biased, rule in (run for run in RUNS if run[0] in chosen):
        fairness = replace(base, floor=args.floor if rule else 0.0)
        nba = replace(settings.nba, enabled=True, min_score=args.min_score, fairness=fairness)
        jobs.append((replace(settings, nba=nba), config, name, args.segment if biased else None, args.penalty,
                     rule or "integral", args.margin))
    if args.jobs <= 1:
        runs = [run_one(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(run_one, *zip(*jobs, strict=True)))
    start_t = config.start_ms / 1000.0
    print(f"fair recommendations in closed loop: {args.customers} customers, {args.days:g} days, seed {args.seed}; "
          f"bias: {args.segment} understated by {args.penalty:g}; gate min_score {args.min_score:g}; constraint "
          f"floor {args.floor:g}, boost {args.boost:g} (integral: gain {args.gain:g}; hysteresis: margin "
          f"{args.margin:g}); windows of {args.window_days:g} days from day {args.from_day:g}")
    head = "".join(f"{s + ' exp':>14}{'ratio':>7}" for s in SEGMENTS)
    print(f"{'run':<22}{head}{'exp. drifts':>15}{'prompts':>9}{'conversion':>11}{'conv/elig':>10}")
    for run in runs:
        f = figures(run, start_t, args.from_day)
        cells = "".join(f"{f.exposure[s]:>14.3f}{f.ratio[s]:>7.2f}" for s in SEGMENTS)
        print(f"{run.name:<22}{cells}{f'{f.drift_windows}/{f.windows}':>15}{f.prompts:>9}{f.conversion:>11.4f}"
              f"{f.conversions_per_eligible:>10.4f}")
    print(f"{args.segment}'s exposure ratio per window (day of the window's start; '-': not judged):")
    days = [f"{(c.start - start_t) / DAY:.0f}" for c in runs[0].checks]
    print(f"{'day':<22}" + "".join(f"{d:>5}" for d in days))
    for run in runs:
        cells = "".join(f"{'-' if r is None else f'{r:.2f}':>5}" for r in ratio_series(run, args.segment))
        print(f"{run.name:<22}{cells}")
    threshold = base.threshold
    print(f"{args.segment}'s exposure ratio over the last {args.last} windows: half its range, mean, windows under "
          f"{threshold:g}; windows until it stays within 0.1 of that mean")
    for run in runs:
        st = settling(ratio_series(run, args.segment), threshold, args.last)
        print(f"{run.name:<22}{st.amplitude:>7.2f}{st.mean:>7.2f}{st.under:>5}/{args.last:<3}"
              f"{'never' if st.settle is None else st.settle:>6}")
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
