"""Card-fraud benchmark on ``bench.merchantsim``: categories, hours, demographics, bursts.

The same run and report as ``bench.card_benchmark`` (the replay through ``run.py replay``
in a subprocess, the handbook protocol with bootstrap intervals, all transactions, every
week, the engine's models one by one, the reference scores, per scenario), on the
profile-based generator instead of the handbook's, plus the bar a card issuer's batch
model sets: for each test week, LightGBM trained offline on every transaction whose label
had arrived before the week began (the stream's ``feedback`` events), scored on the week:

- ``lgbm:basic``: amount, local hour and merchant category alone;
- ``lgbm:customer``: those plus simple aggregates of the card's own past, computed in
  event-time order from the stream: amount over the card's mean so far, its transactions
  in the last 24 hours, hours since its previous one, the share of its past transactions
  in this category, and whether the merchant is new to it.

The generator's scenarios replace the handbook's (card not present, counterfeit card);
there is no ceiling (every burst is visible in its own transactions).

    python -m bench.merchant_benchmark --customers 1000 --days 183 --test-start-day 38 120
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from bench import merchantsim
from bench.card_benchmark import (
    PROJECT_ROOT,
    BenchPaths,
    FloatArray,
    Scoring,
    add_run_arguments,
    ensure_dataset,
    numbered_stream,
    run_benchmark,
)

HOUR_S = 3_600.0
DAY_S = 86_400.0
BASIC = ("amount", "hour", "category")
CUSTOMER = ("amount_to_mean", "count_24h", "log_hours_since_prev", "category_share", "new_merchant")
LGBM_PARAMS: dict[str, object] = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 40,
    "max_cat_to_onehot": 16, "seed": 0, "deterministic": True, "num_threads": 2, "verbose": -1}
LGBM_ROUNDS = 300


@dataclass(frozen=True)
class StreamTable:
    """Per transaction number, what a batch model can know from the event stream: the
    features (columns named by ``BASIC`` and ``CUSTOMER``), when its label arrived (inf if
    never) and the label."""

    features: dict[str, FloatArray]
    label_time: FloatArray
    label: FloatArray

    def matrix(self, names: tuple[str, ...]) -> FloatArray:
        return np.column_stack([self.features[name] for name in names])


class CardHistory:
    """One card's past as the batch features need it, bounded but for the merchant set."""

    __slots__ = ("categories", "count", "last_t", "merchants", "recent", "total")

    def __init__(self) -> None:
        self.count, self.total = 0, 0.0
        self.last_t: float | None = None
        self.recent: deque[float] = deque()
        self.categories: dict[str, int] = {}
        self.merchants: set[str] = set()

    def features(self, t: float, amount: float, category: str, merchant: str) -> tuple[float, ...]:
        """The aggregates before this transaction, then the transaction is added."""
        while self.recent and self.recent[0] <= t - DAY_S:
            self.recent.popleft()
        mean = self.total / self.count if self.count else amount
        gap_h = (t - self.last_t) / HOUR_S if self.last_t is not None else 24.0 * 30
        row = (amount / (mean + 1.0), float(len(self.recent)), math.log1p(max(0.0, gap_h)),
               self.categories.get(category, 0) / self.count if self.count else 0.0,
               float(merchant not in self.merchants))
        self.count += 1
        self.total += amount
        self.last_t = t
        self.recent.append(t)
        self.categories[category] = self.categories.get(category, 0) + 1
        self.merchants.add(merchant)
        return row


def stream_table(events: Path, n: int, utc_offset_hours: float) -> StreamTable:
    """Read the event stream once, in its (event-time) order."""
    cols = {name: np.zeros(n) for name in (*BASIC, *CUSTOMER)}
    label_time = np.full(n, math.inf)
    label = np.zeros(n)
    cards: dict[str, CardHistory] = {}
    codes = {name: i for i, name in enumerate(merchantsim.CATEGORIES)}
    for is_label, number, t, obj in numbered_stream(events, n):
        if is_label:
            label_time[number] = t
            label[number] = float(obj["label"] == "fraud")
            continue
        amount = float(obj["amount"])  # type: ignore[arg-type]
        category = str(obj.get("merchant_category"))
        cols["amount"][number] = amount
        cols["hour"][number] = math.floor((t / HOUR_S + utc_offset_hours) % 24.0)
        cols["category"][number] = codes.get(category, -1)
        history = cards.setdefault(str(obj["customer_id"]), CardHistory())
        for name, value in zip(CUSTOMER, history.features(t, amount, category, str(obj.get("counterparty_id"))),
                               strict=True):
            cols[name][number] = value
    return StreamTable(cols, label_time, label)


def batch_scores(table: StreamTable, cutoff_t: float, names: tuple[str, ...]) -> FloatArray:
    """LightGBM on the transactions labelled before ``cutoff_t``; its scores for all."""
    train = table.label_time < cutoff_t
    x = table.matrix(names)
    if not train.any() or table.label[train].min() == table.label[train].max():
        return np.zeros(x.shape[0])
    data = lgb.Dataset(x[train], label=table.label[train], feature_name=list(names),
                       categorical_feature=["category"], free_raw_data=False)
    booster = lgb.train(LGBM_PARAMS, data, num_boost_round=LGBM_ROUNDS)
    return np.asarray(booster.predict(x), dtype=np.float64)


class BatchBaselines:
    """The two LightGBM baselines of each test week, trained when the report asks."""

    def __init__(self, paths: BenchPaths, config: merchantsim.MerchantSimConfig) -> None:
        self._paths, self._config = paths, config
        self._table: StreamTable | None = None

    def _load(self) -> StreamTable:
        if self._table is None:
            with self._paths.truth.open("rb") as handle:
                n = sum(1 for _ in handle) - 1
            self._table = stream_table(self._paths.events, n, self._config.utc_offset_hours)
        return self._table

    def __call__(self, test_start: int) -> dict[str, FloatArray]:
        table = self._load()
        cutoff = self._config.start_epoch + test_start * DAY_S
        n_train = int((table.label_time < cutoff).sum())
        print(f"\nbatch baselines for day {test_start}: LightGBM {LGBM_ROUNDS} rounds on the {n_train} "
              f"transactions labelled before it")
        return {"lgbm:basic": batch_scores(table, cutoff, BASIC),
                "lgbm:customer": batch_scores(table, cutoff, (*BASIC, *CUSTOMER))}


def prepare_data(config: merchantsim.MerchantSimConfig, paths: BenchPaths) -> bool:
    """Make sure the events and truth of ``config`` exist; True if they were (re)generated."""

    def generate() -> str:
        people, tx = merchantsim.simulate(config)
        merchantsim.write_events(people, tx, config, paths.events)
        merchantsim.write_truth(tx, config, paths.truth)
        return merchantsim.summary(tx)

    return ensure_dataset(paths, {"generator": "merchantsim", **asdict(config)}, generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.merchant_benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    merchantsim.add_config_arguments(parser)
    add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = merchantsim.config_from_args(args)
    workdir: Path = args.workdir or PROJECT_ROOT / "out" / "merchant_benchmark" / (
        f"c{args.customers}_d{args.days}_s{args.seed}")
    paths = BenchPaths(workdir.resolve())
    scoring = Scoring(merchantsim.SCENARIO_NAMES, ceiling=False, week_models=BatchBaselines(paths, config))
    return run_benchmark(args, paths, lambda: prepare_data(config, paths), scoring, other_events=config.customers)


if __name__ == "__main__":
    sys.exit(main())
