"""Card-fraud benchmark: the handbook's simulated card payments through ``run.py replay``.

Generates (or reuses) a dataset with ``bench.cardsim``, replays it through the engine in a
subprocess exactly as an external check would (``run.py replay --input ... --alerts-out
... --scores-out ... --state-out ... --dead-letter-out ...`` from the project root), then
scores the per-transaction ``fraud_score`` against the ground truth:

- the test week (default: the last full week, days ``[days - 7, days)``): ROC AUC,
  average precision and card precision@k per day (mean), on all its transactions and on
  the handbook's test set (customers with a fraud known at the time removed: frauds of
  the week before the delay week up to 8 days before the test day);
- the same per week of the run, so that learning over time is visible;
- per fraud scenario (amount > 220, compromised terminal, compromised card): AUC of its
  frauds against the legitimate transactions, recall in the top N (N = the period's
  number of frauds) and the share that raised an alert;
- two reference scores computed from the event stream alone, to sanity-check the
  engine: ``amount`` (score = amount) and ``online`` (a small counting heuristic that
  learns only from the delayed feedback in the stream: fraud rate by amount bucket, by
  amount-to-customer-mean bucket and by terminal over the last weeks, noisy-OR'ed);
- the replay's wall time and events per second.

    python -m bench.card_benchmark --customers 500 --terminals 1000 --days 40
    python -m bench.card_benchmark                      # 5000 customers, 10000 terminals, 120 days

Files live in ``--workdir`` (default ``out/card_benchmark/<size>``); the dataset is reused
when it was generated with the same parameters. Exit status: 0, or 1 on an error.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import orjson

from bench.cardsim import DAY_S, SCENARIO_NAMES, SimConfig, simulate, summary, write_events, write_truth
from bench.metrics import average_precision, card_precision_by_day, roc_auc
from detectors.quality import auc_and_average_precision

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# -- files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPaths:
    """The files of one benchmark run, all in one work directory."""

    workdir: Path

    @property
    def events(self) -> Path:
        return self.workdir / "events.jsonl.gz"

    @property
    def truth(self) -> Path:
        return self.workdir / "truth.csv"

    @property
    def meta(self) -> Path:
        return self.workdir / "dataset.json"

    @property
    def alerts(self) -> Path:
        return self.workdir / "alerts.jsonl"

    @property
    def scores(self) -> Path:
        return self.workdir / "scores.jsonl"

    @property
    def state(self) -> Path:
        return self.workdir / "state.jsonl"

    @property
    def dead_letters(self) -> Path:
        return self.workdir / "dead_letters.jsonl"

    @property
    def models(self) -> Path:
        return self.workdir / "models.jsonl"

    @property
    def replay_log(self) -> Path:
        return self.workdir / "replay.log"


def _open_text(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # type: ignore[return-value]


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    """The objects of a JSONL file (optionally gzip), streamed; blank lines skipped."""
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)


def _tx_number(event_id: object) -> int | None:
    """``n`` for ``"tx<n>"``, else None."""
    if isinstance(event_id, str) and event_id.startswith("tx") and event_id[2:].isdigit():
        return int(event_id[2:])
    return None


def ensure_dataset(paths: BenchPaths, wanted: dict[str, object], generate: Callable[[], str]) -> bool:
    """Make sure the events and truth generated with the parameters ``wanted`` exist, else
    run ``generate`` (which writes both and returns a summary); True if it ran."""
    if paths.events.exists() and paths.truth.exists() and paths.meta.exists():
        try:
            if json.loads(paths.meta.read_text()) == wanted:
                return False
        except ValueError:
            pass
    paths.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = generate()
    paths.meta.write_text(json.dumps(wanted, indent=1))
    print(f"generated {done} in {time.perf_counter() - started:.1f}s")
    return True


def prepare_data(config: SimConfig, paths: BenchPaths) -> bool:
    """Make sure the events and truth of ``config`` exist; True if they were (re)generated."""

    def generate() -> str:
        tx = simulate(config)
        write_events(tx, config, paths.events)
        write_truth(tx, config, paths.truth)
        return summary(tx)

    return ensure_dataset(paths, asdict(config), generate)


# -- replay ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayRun:
    """How the engine's replay went."""

    returncode: int
    wall_s: float
    n_events: int

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.wall_s if self.wall_s > 0 else math.nan


def replay_command(paths: BenchPaths) -> list[str]:
    """The replay exactly as an external check runs it (from the project root)."""
    return [sys.executable, "run.py", "replay", "--input", str(paths.events),
            "--alerts-out", str(paths.alerts), "--scores-out", str(paths.scores),
            "--state-out", str(paths.state), "--dead-letter-out", str(paths.dead_letters),
            "--models-out", str(paths.models)]


def run_replay(paths: BenchPaths, n_events: int, timeout_s: float | None) -> ReplayRun:
    """Run the replay as a subprocess, its output in ``replay.log``; never raises on failure."""
    for out in (paths.alerts, paths.scores, paths.state, paths.dead_letters, paths.models):
        out.unlink(missing_ok=True)
    started = time.perf_counter()
    with paths.replay_log.open("wb") as log:
        try:
            code = subprocess.run(replay_command(paths), cwd=PROJECT_ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return ReplayRun(code, time.perf_counter() - started, n_events)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- truth, scores, alerts ------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """Labels per transaction, indexed by transaction number."""

    customer: IntArray
    day: IntArray
    fraud: BoolArray
    scenario: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.day.size)


def load_truth(path: Path) -> Truth:
    """Read ``bench.cardsim``'s truth CSV (rows in transaction-number order)."""
    customers: list[int] = []
    days: list[int] = []
    frauds: list[bool] = []
    scenarios: list[int] = []
    with _open_text(path) as handle:
        header = handle.readline().decode().strip().split(",")
        col = {name: i for i, name in enumerate(header)}
        ie, ic, idy, ifr, isc = (col[n] for n in ("event_id", "customer_id", "day", "is_fraud", "scenario"))
        for number, raw in enumerate(handle):
            fields = raw.decode().rstrip("\r\n").split(",")
            if _tx_number(fields[ie]) != number:
                raise ValueError(f"{path}: row {number + 2} is {fields[ie]!r}, expected 'tx{number}'")
            customers.append(int(fields[ic].removeprefix("cust")))
            days.append(int(fields[idy]))
            frauds.append(fields[ifr] == "1")
            scenarios.append(int(fields[isc]))
    return Truth(np.asarray(customers, dtype=np.int64), np.asarray(days, dtype=np.int64),
                 np.asarray(frauds, dtype=bool), np.asarray(scenarios, dtype=np.int8))


def load_scores(path: Path, n: int) -> tuple[dict[str, FloatArray], int]:
    """Per transaction number (missing ones 0.0), the engine's ``fraud_score`` (``engine``:
    the champion's) and each of its models' (``score_<model>``, as ``engine:<model>``); and
    how many transactions had no score."""
    scores: dict[str, FloatArray] = {"engine": np.full(n, np.nan)}
    for obj in _jsonl(path):
        number = _tx_number(obj.get("event_id"))
        if number is None or number >= n:
            continue
        for key, value in obj.items():
            name = "engine" if key == "fraud_score" else "engine:" + key[6:] if key.startswith("score_") else None
            if name is not None and isinstance(value, int | float):
                if name not in scores:
                    scores[name] = np.full(n, np.nan)
                scores[name][number] = float(value)
    missing = int(np.isnan(scores["engine"]).sum())
    for values in scores.values():
        values[np.isnan(values)] = 0.0
    return scores, missing


def load_alerted(path: Path, n: int) -> BoolArray:
    """Which transactions raised at least one alert."""
    alerted = np.zeros(n, dtype=bool)
    if path.exists():
        for obj in _jsonl(path):
            number = _tx_number(obj.get("event_id"))
            if number is not None and number < n:
                alerted[number] = True
    return alerted


# -- reference scores from the stream alone -------------------------------------------------


class OnlineReference:
    """A counting heuristic that learns only from the feedback events in the stream.

    Three fraud rates, each Beta-smoothed towards ``prior`` and learned from labels as they
    arrive: by amount bucket (10-unit steps), by bucket of the amount over the customer's
    running mean amount (0.5 steps), and by terminal with exponentially decayed counts
    (``halflife_days``). The score is their noisy-OR. It scores before it learns.
    """

    def __init__(self, n_tx: int, prior: float = 0.01, strength: float = 2.0,
                 halflife_days: float = 14.0) -> None:
        self._prior, self._strength = prior, strength
        self._decay = math.log(2) / (halflife_days * DAY_S)
        self._amount_bucket = np.zeros(n_tx, dtype=np.int16)
        self._ratio_bucket = np.zeros(n_tx, dtype=np.int16)
        self._terminal = np.zeros(n_tx, dtype=np.int64)
        self._amount_counts = np.zeros((2, 101))  # frauds, labels
        self._ratio_counts = np.zeros((2, 41))
        self._terminal_counts: dict[int, list[float]] = {}  # frauds, labels, as-of time
        self._customer_sums: dict[int, list[float]] = {}  # count, sum of amounts
        self._last_fraud_label: dict[int, float] = {}  # terminal -> when its latest fraud label came
        #: Per transaction: a fraud label had come for its terminal in the 28 days before it.
        self.terminal_fraud_known = np.zeros(n_tx, dtype=bool)

    def _rate(self, frauds: float, labels: float) -> float:
        return (frauds + self._strength * self._prior) / (labels + self._strength)

    def _terminal_state(self, terminal: int, t: float) -> list[float]:
        state = self._terminal_counts.setdefault(terminal, [0.0, 0.0, t])
        factor = math.exp(-self._decay * (t - state[2]))
        state[0] *= factor
        state[1] *= factor
        state[2] = t
        return state

    def score(self, number: int, t: float, customer: int, terminal: int, amount: float) -> float:
        """The score of a transaction, from what was learned before it."""
        count, total = self._customer_sums.setdefault(customer, [0.0, 0.0])
        ratio_bucket = min(40, int(2 * amount / (total / count))) if count and total > 0 else 0
        amount_bucket = min(100, int(amount // 10))
        self._amount_bucket[number], self._ratio_bucket[number] = amount_bucket, ratio_bucket
        self._terminal[number] = terminal
        last = self._last_fraud_label.get(terminal)
        self.terminal_fraud_known[number] = last is not None and t - last < 28 * DAY_S
        sums = self._customer_sums[customer]
        sums[0] += 1.0
        sums[1] += amount
        term = self._terminal_state(terminal, t)
        rates = (self._rate(*self._amount_counts[:, amount_bucket]),
                 self._rate(*self._ratio_counts[:, ratio_bucket]), self._rate(term[0], term[1]))
        return 1.0 - math.prod(1.0 - r for r in rates)

    def learn(self, number: int, t: float, fraud: bool) -> None:
        """A ``fraud``/``legit`` label for transaction ``number`` arrives at time ``t``."""
        self._amount_counts[:, self._amount_bucket[number]] += (float(fraud), 1.0)
        self._ratio_counts[:, self._ratio_bucket[number]] += (float(fraud), 1.0)
        term = self._terminal_state(int(self._terminal[number]), t)
        term[0] += float(fraud)
        if fraud:
            self._last_fraud_label[int(self._terminal[number])] = t
        term[1] += 1.0


def _epoch(ts: str) -> float:
    """Unix time of an RFC 3339 timestamp."""
    return datetime.fromisoformat(ts).timestamp()


def _count_lines(path: Path) -> int:
    with _open_text(path) as handle:
        return sum(1 for _ in handle)


def numbered_stream(events: Path, n: int) -> Iterator[tuple[bool, int, float, dict[str, object]]]:
    """``(is_label, transaction number, time, event)`` for the transactions ``tx<number>``
    (number < ``n``) and their ``fraud``/``legit`` labels, in the file's order."""
    for obj in _jsonl(events):
        kind = obj.get("kind")
        if kind == "transaction":
            number = _tx_number(obj.get("event_id"))
        elif kind == "feedback" and obj.get("label") in ("fraud", "legit"):
            number = _tx_number(obj.get("ref_event_id"))
        else:
            continue
        if number is not None and number < n:
            yield kind == "feedback", number, _epoch(str(obj["ts"])), obj


def reference_scores(events: Path, n: int) -> tuple[dict[str, FloatArray], BoolArray]:
    """Scores of the reference models for every transaction, from the event file alone, and
    for each transaction whether a fraud label had come for its terminal in the 28 days
    before it (``OnlineReference.terminal_fraud_known``)."""
    amount = np.zeros(n)
    online = np.zeros(n)
    model = OnlineReference(n)
    counterparties: dict[str, int] = {}  # id -> number, in order of first appearance
    for is_label, number, t, obj in numbered_stream(events, n):
        if is_label:
            model.learn(number, t, obj["label"] == "fraud")
            continue
        value = float(obj["amount"])  # type: ignore[arg-type]
        amount[number] = value
        online[number] = model.score(number, t, int(str(obj["customer_id"]).removeprefix("cust")),
                                     counterparties.setdefault(str(obj.get("counterparty_id")), len(counterparties)),
                                     value)
    return {"amount": amount, "online": online}, model.terminal_fraud_known


# -- metrics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodMetrics:
    """Quality of one score on a set of transactions."""

    n_tx: int
    n_fraud: int
    auc: float
    ap: float
    cp_by_day: tuple[float, ...]

    @property
    def cp(self) -> float:
        return float(np.mean(self.cp_by_day)) if self.cp_by_day else math.nan


def period_metrics(mask: BoolArray, truth: Truth, scores: FloatArray, k: int) -> PeriodMetrics:
    """AUC, AP and card precision@k per day of the transactions in ``mask``."""
    y, s = truth.fraud[mask], scores[mask]
    per_day = card_precision_by_day(truth.day[mask], truth.customer[mask], s, y, k)
    return PeriodMetrics(int(mask.sum()), int(y.sum()), roc_auc(y, s), average_precision(y, s),
                         tuple(p for _, p in per_day))


def week_ranges(n_days: int, test_start: int) -> list[tuple[int, int]]:
    """Seven-day ``[lo, hi)`` ranges aligned on the test week, covering ``[0, n_days)``.

    >>> week_ranges(20, 10)
    [(0, 3), (3, 10), (10, 17), (17, 20)]
    """
    first = test_start - 7 * math.ceil(test_start / 7)
    return [(max(0, lo), min(lo + 7, n_days)) for lo in range(first, n_days, 7) if lo + 7 > 0]


def handbook_test_mask(truth: Truth, test_start: int, n_test_days: int = 7, delay_days: int = 7,
                       train_days: int = 7) -> BoolArray:
    """The handbook's test set: test-week transactions of cards not known to be compromised.

    For test day ``D`` the known compromised cards are those with a fraud on the days from
    the training week's start (``test_start - delay - train``) to ``D - delay - 1``.
    """
    mask = np.zeros(len(truth), dtype=bool)
    first_known = test_start - delay_days - train_days
    for day in range(test_start, test_start + n_test_days):
        known_days = (truth.day >= first_known) & (truth.day <= day - delay_days - 1)
        known = np.unique(truth.customer[known_days & truth.fraud])
        mask |= (truth.day == day) & ~np.isin(truth.customer, known)
    return mask


def bootstrap_interval(mask: BoolArray, truth: Truth, scores: FloatArray, rounds: int = 200,
                       seed: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    """95 % intervals of AUC and AP over the transactions in ``mask``, from a bootstrap that
    resamples cards (a card's frauds come together, so resampling transactions would
    understate the spread)."""
    rows = np.flatnonzero(mask)
    cards, first = np.unique(truth.customer[rows], return_inverse=True)
    order = np.argsort(first, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(first, minlength=len(cards)))]
    by_card = [rows[order[starts[i]:starts[i + 1]]] for i in range(len(cards))]
    rng = np.random.default_rng(seed)
    figures = []
    for _ in range(rounds):
        picked = np.concatenate([by_card[i] for i in rng.integers(0, len(cards), len(cards))])
        figures.append(auc_and_average_precision(truth.fraud[picked], scores[picked]))
    auc_lo, ap_lo = np.nanpercentile(figures, 2.5, axis=0)
    auc_hi, ap_hi = np.nanpercentile(figures, 97.5, axis=0)
    return (float(auc_lo), float(auc_hi)), (float(ap_lo), float(ap_hi))


def ceiling(mask: BoolArray, truth: Truth, knowable: BoolArray, seed: int = 0) -> tuple[float, float]:
    """AUC and AP of an oracle that knows every fraud except those nobody can know yet: the
    compromised-terminal frauds at a terminal with no fraud label in the 28 days before
    (labels come 7 days late, so a terminal's first week of frauds looks legitimate). Those
    it ranks at random among the legitimate transactions."""
    rng = np.random.default_rng(seed)
    blind = truth.fraud & (truth.scenario == 2) & ~knowable
    oracle = np.where(truth.fraud & ~blind, 1.0 + rng.random(len(truth)), rng.random(len(truth)))
    return auc_and_average_precision(truth.fraud[mask], oracle[mask])


@dataclass(frozen=True)
class ScenarioRow:
    """Detection of one fraud scenario in a period."""

    scenario: int
    n: int
    auc: float
    recall_top_n: float
    alert_recall: float


def scenario_rows(mask: BoolArray, truth: Truth, scores: FloatArray, alerted: BoolArray,
                  scenarios: Iterable[int] = (1, 2, 3)) -> list[ScenarioRow]:
    """Per scenario: AUC against legit, recall in the top N (N = frauds in the period), alerted."""
    s = scores[mask]
    n_fraud = int(truth.fraud[mask].sum())
    threshold = np.sort(s)[::-1][n_fraud - 1] if 0 < n_fraud <= s.size else math.inf
    legit = mask & ~truth.fraud
    rows: list[ScenarioRow] = []
    for scenario in scenarios:
        hit = mask & truth.fraud & (truth.scenario == scenario)
        n = int(hit.sum())
        pair = hit | legit
        auc = roc_auc(hit[pair], scores[pair]) if n else math.nan
        recall = float((scores[hit] >= threshold).mean()) if n else math.nan
        alert = float(alerted[hit].mean()) if n else math.nan
        rows.append(ScenarioRow(scenario, n, auc, recall, alert))
    return rows


# -- report ---------------------------------------------------------------------------------


def _f(value: float, width: int = 6) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.3f}"


def print_period(title: str, models: dict[str, PeriodMetrics], k: int,
                 intervals: dict[str, tuple[tuple[float, float], tuple[float, float]]] | None = None) -> None:
    """One period's table; with ``intervals``, each model's 95 % bootstrap intervals."""
    intervals = intervals or {}
    print(f"\n{title}")
    print(f"  {'score':<14} {'tx':>8} {'frauds':>7} {'AUC':>6} {'AP':>6} {f'CP@{k}':>7}   CP@k by day")
    for name, m in models.items():
        days = " ".join(f"{p:.2f}" for p in m.cp_by_day)
        print(f"  {name:<14} {m.n_tx:>8} {m.n_fraud:>7} {_f(m.auc)} {_f(m.ap)} {_f(m.cp, 7)}   {days}")
        if name in intervals:
            (auc_lo, auc_hi), (ap_lo, ap_hi) = intervals[name]
            print(f"  {'':<14} {'':>8} {'95 %':>7} AUC {auc_lo:.3f}-{auc_hi:.3f}, AP {ap_lo:.3f}-{ap_hi:.3f}"
                  " (bootstrap over cards)")


def print_weeks(weeks: list[tuple[tuple[int, int], dict[str, PeriodMetrics]]], k: int,
                title: str = "Per week") -> None:
    names = list(weeks[0][1]) if weeks else []
    print(f"\n{title} (AUC / AP / CP@{k})")
    print(f"  {'days':<9} {'tx':>7} {'frauds':>6}" + "".join(f"  {n:^20}" for n in names))
    for (lo, hi), models in weeks:
        first = next(iter(models.values()))
        cells = "".join(f"  {_f(m.auc)} {_f(m.ap)} {_f(m.cp)}" for m in models.values())
        print(f"  {lo:>3}-{hi - 1:<5} {first.n_tx:>7} {first.n_fraud:>6}{cells}")


def print_scenarios(title: str, rows_by_model: dict[str, list[ScenarioRow]],
                    names_of: Mapping[int, str] = SCENARIO_NAMES) -> None:
    print(f"\n{title}")
    names = list(rows_by_model)
    print(f"  {'scenario':<22} {'frauds':>6}" + "".join(f"  {n + ' AUC':>12} {'top-N rec':>9}" for n in names)
          + f"  {'alerted':>7}")
    for i, row in enumerate(rows_by_model[names[0]]):
        cells = "".join(f"  {_f(rows_by_model[n][i].auc, 12)} {_f(rows_by_model[n][i].recall_top_n, 9)}"
                        for n in names)
        label = f"{row.scenario} {names_of[row.scenario]}"
        print(f"  {label:<22} {row.n:>6}{cells}  {_f(row.alert_recall, 7)}")


def alert_quality(mask: BoolArray, truth: Truth, alerted: BoolArray) -> str:
    flagged = mask & alerted
    n_flagged = int(flagged.sum())
    frauds = int((mask & truth.fraud).sum())
    tp = int((flagged & truth.fraud).sum())
    precision = tp / n_flagged if n_flagged else math.nan
    recall = tp / frauds if frauds else math.nan
    return f"{n_flagged} alerted transactions, precision {_f(precision, 0)}, recall {_f(recall, 0)}"


# -- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.card_benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=10000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark run, whatever the generator."""
    parser.add_argument("--workdir", type=Path, default=None,
                        help="files here (default out/<benchmark>/<size> under the project)")
    parser.add_argument("--test-start-day", type=int, nargs="+", default=None,
                        help="first day of each test week (default: days - 7)")
    parser.add_argument("--k", type=int, default=100, help="cards per day for card precision@k")
    parser.add_argument("--skip-replay", action="store_true",
                        help="score the existing scores file of the work directory")
    parser.add_argument("--timeout", type=float, default=None, help="replay time limit, seconds")


@dataclass(frozen=True)
class Scoring:
    """What differs between the generators' reports: their fraud scenarios, whether the
    ceiling applies (it is defined by ``bench.cardsim``'s compromised terminals), and the
    scores of models trained for one test week (``test start -> {name: scores}``), shown in
    that week's tables only."""

    scenario_names: Mapping[int, str]
    ceiling: bool = True
    week_models: Callable[[int], dict[str, FloatArray]] | None = None


CARDSIM_SCORING = Scoring(SCENARIO_NAMES)


def evaluate(paths: BenchPaths, test_starts: list[int], n_days: int, k: int,
             scoring: Scoring = CARDSIM_SCORING) -> None:
    """Read truth, scores, alerts and events of ``paths`` and print every table: for each
    test week the handbook protocol first (with bootstrap intervals and the ceiling), then
    all its transactions; then every week, both ways, and the scenarios."""
    scenarios = [s for s in scoring.scenario_names if s != 0]
    truth = load_truth(paths.truth)
    n = len(truth)
    engine, missing = load_scores(paths.scores, n)
    if missing:
        print(f"warning: {missing} of {n} transactions have no score (counted as 0.0)")
    alerted = load_alerted(paths.alerts, n)
    references, knowable = reference_scores(paths.events, n)
    models = {**engine, **references}
    print_champions(paths.models)
    for test_start in test_starts:
        days = f"days {test_start}-{min(test_start + 7, n_days) - 1}"
        week = {**models, **(scoring.week_models(test_start) if scoring.week_models else {})}
        handbook = handbook_test_mask(truth, test_start)
        print_period(f"Test week {days}, handbook test set (cards with a known fraud removed)",
                     {name: period_metrics(handbook, truth, s, k) for name, s in week.items()}, k,
                     {name: bootstrap_interval(handbook, truth, s) for name, s in week.items()
                      if name not in references})
        if scoring.ceiling:
            top_auc, top_ap = ceiling(handbook, truth, knowable)
            print(f"  ceiling (every fraud known but a compromised terminal's before its first label): "
                  f"AUC {top_auc:.3f}, AP {top_ap:.3f}")
        test = (truth.day >= test_start) & (truth.day < test_start + 7)
        print_period(f"Test week {days}, all transactions",
                     {name: period_metrics(test, truth, s, k) for name, s in week.items()}, k)
        print(f"  engine alerts in the test week: {alert_quality(test, truth, alerted)}")
    test_start = test_starts[-1]
    test = (truth.day >= test_start) & (truth.day < test_start + 7)
    ranges = week_ranges(n_days, test_start)
    print_weeks([((lo, hi), {name: period_metrics(handbook_test_mask(truth, lo, hi - lo), truth, s, k)
                             for name, s in models.items()}) for lo, hi in ranges if lo >= 14],
                k, "Per week, handbook test set")
    weeks = [((lo, hi), {name: period_metrics((truth.day >= lo) & (truth.day < hi), truth, s, k)
                         for name, s in models.items()})
             for lo, hi in ranges]
    print_weeks(weeks, k, "Per week, all transactions")
    print_scenarios("Per scenario, test week (top-N: N = frauds in the week; alerted: engine)",
                    {name: scenario_rows(test, truth, s, alerted, scenarios) for name, s in models.items()},
                    scoring.scenario_names)
    after_first = truth.day >= 7
    print_scenarios("Per scenario, days 7 to the end",
                    {name: scenario_rows(after_first, truth, s, alerted, scenarios) for name, s in models.items()},
                    scoring.scenario_names)


def print_champions(path: Path) -> None:
    """The engine's own champion changes (``--models-out``), as the audit trail has them."""
    if not path.exists():
        return
    changes = [obj for obj in _jsonl(path) if obj.get("kind") == "model_change"]
    reports = [obj for obj in _jsonl(path) if obj.get("kind") == "model_report"]
    print(f"\nEngine's model reports: {len(reports)}; champion changes: {len(changes)}")
    for change in changes:
        print(f"  {change['as_of']} {change['from_model']} -> {change['to_model']} ({change['action']}): "
              f"{change['reason']}")
    if reports:
        last = reports[-1]
        figures = ", ".join(f"{m['model']} AUC {m['auc']} AP {m['ap']}" for m in last["models"])
        print(f"  last report {last['as_of']}: champion {last['champion']}; {figures} "
              f"over {last['models'][0]['labels']} labels")


def run_benchmark(args: argparse.Namespace, paths: BenchPaths, prepare: Callable[[], object],
                  scoring: Scoring = CARDSIM_SCORING, other_events: int = 0) -> int:
    """Prepare the data, replay it (unless ``--skip-replay`` finds scores) and print the
    report; the exit status. ``other_events``: events besides transactions and labels."""
    test_starts = [args.days - 7] if args.test_start_day is None else args.test_start_day
    if not all(0 <= start < args.days for start in test_starts):
        print(f"--test-start-day must be in [0, {args.days})", file=sys.stderr)
        return 1
    try:
        prepare()
        n_events = 2 * (_count_lines(paths.truth) - 1) + other_events  # a transaction and its feedback
        if args.skip_replay and paths.scores.exists():
            print(f"scoring the existing {paths.scores}")
        else:
            print(f"replaying {n_events} events: {' '.join(replay_command(paths))}", flush=True)
            run = run_replay(paths, n_events, args.timeout)
            if run.returncode != 0:
                print(f"replay failed (exit {run.returncode}) after {run.wall_s:.1f}s; "
                      f"end of {paths.replay_log}:\n{_tail(paths.replay_log)}", file=sys.stderr)
                return 1
            print(f"replay: {run.wall_s:.1f}s wall, {run.events_per_s:,.0f} events/s")
        evaluate(paths, test_starts, args.days, args.k, scoring)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = SimConfig(customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed)
    workdir = args.workdir or PROJECT_ROOT / "out" / "card_benchmark" / (
        f"c{args.customers}_t{args.terminals}_d{args.days}_s{args.seed}")
    paths = BenchPaths(workdir.resolve())
    return run_benchmark(args, paths, lambda: prepare_data(config, paths))


if __name__ == "__main__":
    sys.exit(main())
