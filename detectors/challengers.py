"""The fraud models beside the logistic one, and how the engine picks the one that decides.

Three pieces, plain Python and numpy (LightGBM for the trees), all driven by event time:

- ``LabelWindow``: the labelled feature vectors of a bounded recent window (every fraud, a
  deterministic sample of the legitimate ones, weighted back up), the training set of a
  batch learner.
- ``BoostedTrees``: a gradient-boosted tree model (LightGBM) retrained every
  ``retrain_every_s`` of event time on the window, off the hot path. A training starts at a
  model-tick end ``E`` on the labels known at ``E``, runs on a thread (LightGBM releases the
  GIL, so it takes the second core) and its model is installed at the first tick end at or
  after ``E + install_after_s``. Should the training still be running then, the tick waits
  for it: what scores which transaction depends on event time only, so a replay scores
  exactly as the live run did, whatever the machine's speed. Trees form the interactions a
  linear model cannot (amount x hour x category, a terminal's rate x the card's history).
- ``Prequential`` and ``ChampionChallenger``: every model scores every transaction; when its
  label arrives, each model's score joins a sliding window of the last ``window_labels``
  labels, the same labels for every model. At every evaluation (each ``evaluate_every_s`` of
  event time) each model's AUC and average precision over that window are computed; the
  champion's score is the one that decides alerts. With ``auto_promote`` a challenger that
  has led the champion's average precision by ``margin`` (with AUC no worse than ``margin``
  below) at ``patience`` evaluations in a row, with at least ``min_labels`` labels and
  ``min_frauds`` frauds in the window, is promoted (hysteresis: the old champion must do
  the same to come back). A configured champion (``champion``) is the start, and a changed
  one in the configuration is applied at the next evaluation after a restore; every change
  is a ``ModelChange`` for the audit trail.

>>> window = LabelWindow(2, LabelWindow.Params(legit_sample=1.0))
>>> window.add(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([True, False]), np.ones(2), 86400.0)
>>> x, y, w = window.training_set(86400.0, 30 * 86400.0)
>>> x.shape, y.tolist(), w.tolist()
((2, 2), [1.0, 0.0], [1.0, 1.0])
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from detectors.quality import auc_and_average_precision
from schemas.outputs import ModelFigures
from schemas.snapshots import restore_fields

if TYPE_CHECKING:
    import lightgbm

DAY: Final = 86400.0
LINEAR: Final = "linear"
TREES: Final = "gbm"


# -- the training window --------------------------------------------------------------------


class LabelWindow:
    """Labelled feature vectors (float32) in chunks of one model tick, oldest first, bounded
    by age (at training) and by ``max_rows``. Legitimate rows are kept with probability
    ``legit_sample`` (by a hash of the vector, so deterministic) and weighted by its inverse,
    so the model's probabilities stay calibrated to the label mix."""

    @dataclass(frozen=True, slots=True)
    class Params:
        legit_sample: float = 0.2
        max_rows: int = 150_000

        __setstate__ = restore_fields

        def __post_init__(self) -> None:
            if not 0.0 < self.legit_sample <= 1.0:
                raise ValueError(f"legit_sample must be in (0, 1], got {self.legit_sample}")
            if self.max_rows < 1:
                raise ValueError(f"max_rows must be positive, got {self.max_rows}")

    def __init__(self, n_features: int, params: LabelWindow.Params | None = None) -> None:
        self.params = params or LabelWindow.Params()
        self.n_features = n_features
        self._chunks: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []  # known_at, x, y, w
        self.rows = 0

    def add(self, x: np.ndarray, is_fraud: np.ndarray, weight: np.ndarray, known_at: float) -> None:
        """Labelled rows known by ``known_at`` (a tick's end); legitimate ones sampled."""
        p = self.params
        if p.legit_sample < 1.0:
            keep = is_fraud | (_row_hash(x) < p.legit_sample * 2.0**32)
            x, is_fraud, weight = x[keep], is_fraud[keep], np.where(is_fraud[keep], weight[keep],
                                                                    weight[keep] / p.legit_sample)
        if not len(x):
            return
        self._chunks.append((known_at, x.astype(np.float32), is_fraud.astype(np.float32),
                             weight.astype(np.float32)))
        self.rows += len(x)
        while self.rows > p.max_rows:
            t, cx, cy, cw = self._chunks[0]
            excess = self.rows - p.max_rows
            if excess >= len(cx):
                self._chunks.pop(0)
                self.rows -= len(cx)
            else:
                self._chunks[0] = (t, cx[excess:], cy[excess:], cw[excess:])
                self.rows -= excess

    def training_set(self, now: float, span_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows known within ``span_s`` before ``now``: features, labels, weights."""
        chunks = [c for c in self._chunks if now - c[0] < span_s]
        if not chunks:
            empty = np.zeros(0, np.float32)
            return np.zeros((0, self.n_features), np.float32), empty, empty
        return (np.concatenate([c[1] for c in chunks]), np.concatenate([c[2] for c in chunks]),
                np.concatenate([c[3] for c in chunks]))

    def frauds(self, now: float, span_s: float) -> int:
        return int(sum(c[2].sum() for c in self._chunks if now - c[0] < span_s))


def _row_hash(x: np.ndarray) -> np.ndarray:
    """A deterministic hash in [0, 2**32) of each row's float64 bits (a multiplicative mix)."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    mixed = (bits * np.uint64(0x9E3779B97F4A7C15)) ^ (bits >> np.uint64(29))
    weights = np.uint64(0xBF58476D1CE4E5B9) ** np.arange(1, x.shape[1] + 1, dtype=np.uint64)
    return ((mixed * weights).sum(axis=1, dtype=np.uint64) >> np.uint64(32)).astype(np.float64)


# -- the gradient-boosted trees -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreesParams:
    """The gradient-boosted challenger (``[fraud.gbm]``)."""

    enabled: bool = True
    retrain_every_s: float = 2 * DAY  # event time between trainings
    install_after_s: float = 2 * DAY  # event time between a training's start and its model scoring
    window_days: float = 30.0  # labels this recent (by the time they became known) train it
    max_rows: int = 150_000  # rows the window keeps at most (memory, training time)
    legit_sample: float = 0.1  # share of legitimate labels kept (weighted back up)
    min_frauds: int = 20  # no training before this many frauds in the window
    rounds: int = 100
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_data_in_leaf: int = 100
    max_bin: int = 63  # feature histogram bins (LightGBM's default 255 trains slower, no better here)
    l2: float = 1.0
    feature_fraction: float = 0.8
    seed: int = 0
    background: bool = True  # train on a thread (False: inline, at the tick; for tests and tools)

    __setstate__ = restore_fields

    def __post_init__(self) -> None:
        LabelWindow.Params(self.legit_sample, self.max_rows)  # checks them
        if not (self.retrain_every_s > 0 and self.install_after_s >= 0 and self.window_days > 0):
            raise ValueError("retrain_every_s and window_days must be positive, install_after_s not negative")
        if self.rounds < 1 or self.num_leaves < 2:
            raise ValueError("rounds must be positive and num_leaves at least 2")

    def lightgbm(self) -> dict[str, Any]:
        """LightGBM's parameters: one thread (the dataflow has the other core), deterministic."""
        return {"objective": "binary", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_data_in_leaf": self.min_data_in_leaf, "max_bin": self.max_bin, "lambda_l2": self.l2,
                "feature_fraction": self.feature_fraction, "seed": self.seed, "deterministic": True,
                "force_col_wise": True, "num_threads": 1, "verbose": -1}


def train_trees(x: np.ndarray, y: np.ndarray, w: np.ndarray, params: TreesParams) -> str:
    """A LightGBM model trained on the rows, as its model string (what the state keeps)."""
    import lightgbm

    data = lightgbm.Dataset(x, y, weight=w, params={"verbose": -1, "max_bin": params.max_bin}, free_raw_data=True)
    booster = lightgbm.train(params.lightgbm(), data, num_boost_round=params.rounds)
    model: str = booster.model_to_string()
    return model


class _Training:
    """One training: started at tick end ``started``, installed at ``install_at`` or later."""

    def __init__(self, started: float, install_at: float, labels: int) -> None:
        self.started, self.install_at, self.labels = started, install_at, labels
        self.model: str | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, params: TreesParams) -> None:
        def work() -> None:
            try:
                self.model = train_trees(x, y, w, params)
            except BaseException as exc:  # reported where the model is installed
                self.error = exc
            finally:
                self._done.set()

        if params.background:
            self._thread = threading.Thread(target=work, name="gbm-training", daemon=True)
            self._thread.start()
        else:
            work()

    def result(self) -> str:
        """The model string, once the training is over (waits for it); raises its error."""
        self._done.wait()
        if self.error is not None:
            raise RuntimeError(f"training the gradient-boosted model failed: {self.error!r}") from self.error
        assert self.model is not None
        return self.model

    def __getstate__(self) -> dict[str, object]:
        try:
            model: str | None = self.result()  # a snapshot waits for the training in flight
        except RuntimeError:
            model = None
        return {"started": self.started, "install_at": self.install_at, "labels": self.labels, "model": model}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["started"], state["install_at"], state["labels"])  # type: ignore[misc]
        self.model = state["model"]
        if self.model is None:
            self.error = RuntimeError("the training in flight at the snapshot failed")
        self._done.set()


class BoostedTrees:
    """Gradient-boosted trees retrained on a window of labelled vectors (see the module doc)."""

    def __init__(self, n_features: int, params: TreesParams | None = None) -> None:
        self.params = params or TreesParams()
        p = self.params
        self.window = LabelWindow(n_features, LabelWindow.Params(p.legit_sample, p.max_rows))
        self.model: str | None = None  # the installed model's string
        self.installed = 0  # models installed so far
        self.trained_on = 0  # labelled rows the installed model learned from
        self._booster: lightgbm.Booster | None = None  # built from ``model``
        self._training: _Training | None = None
        self._next_training: float | None = None

    @property
    def version(self) -> str:
        return f"gbm-1.{self.installed}" if self.installed else "gbm-1.none"

    @property
    def ready(self) -> bool:
        return self.model is not None

    def learn(self, x: np.ndarray, is_fraud: np.ndarray, weight: np.ndarray, known_at: float) -> None:
        """Labelled vectors known at ``known_at``, into the training window."""
        self.window.add(x, is_fraud, weight, known_at)

    def tick(self, end: float) -> bool:
        """At a model tick's end: install a finished training that is due, then start the
        next one if it is time; whether a new model was installed."""
        installed = False
        training = self._training
        if training is not None and end >= training.install_at:
            self._training = None
            # A failed training raises here; the installed model (if any) goes on scoring.
            self._install(training.result(), training.labels)
            installed = True
        if self._training is None and (self._next_training is None or end >= self._next_training):
            self._start(end)
        return installed

    def _start(self, end: float) -> None:
        p = self.params
        span = p.window_days * DAY
        if self.window.frauds(end, span) < p.min_frauds:
            return
        x, y, w = self.window.training_set(end, span)
        training = self._training = _Training(end, end + p.install_after_s, len(y))
        self._next_training = end + p.retrain_every_s
        training.run(x, y, w, p)

    def _install(self, model: str, labels: int) -> None:
        self.model, self._booster = model, None
        self.installed += 1
        self.trained_on = labels

    def booster(self) -> lightgbm.Booster:
        if self._booster is None:
            import lightgbm

            assert self.model is not None
            self._booster = lightgbm.Booster(model_str=self.model)
        return self._booster

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Fraud probabilities of the rows of ``x`` by the installed model (``ready``)."""
        return np.asarray(self.booster().predict(x, num_threads=1))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each feature's contribution to the log-odds of each row (TreeSHAP); the last column
        is the expected value."""
        return np.asarray(self.booster().predict(x, pred_contrib=True, num_threads=1))

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_booster": None}  # rebuilt from ``model``


# -- prequential evaluation and the champion ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ChampionParams:
    """Which model decides, how they are compared and when one is promoted (``[fraud.champion]``)."""

    champion: str = LINEAR  # the model that decides at the start ("linear" or "gbm")
    auto_promote: bool = True
    evaluate_every_s: float = DAY  # event time between evaluations
    window_labels: int = 50_000  # the last labels every model is evaluated on
    min_labels: int = 5_000
    min_frauds: int = 100
    margin: float = 0.01  # average precision a challenger must lead by (AUC: may trail by at most)
    patience: int = 3  # evaluations in a row it must lead at

    __setstate__ = restore_fields

    def __post_init__(self) -> None:
        if self.champion not in (LINEAR, TREES):
            raise ValueError(f"champion must be {LINEAR!r} or {TREES!r}, got {self.champion!r}")
        if not (self.evaluate_every_s > 0 and self.window_labels > 0 and self.patience > 0):
            raise ValueError("evaluate_every_s, window_labels and patience must be positive")


class Prequential:
    """The last ``size`` labels and every model's score of their transactions (a ring)."""

    def __init__(self, models: tuple[str, ...], size: int) -> None:
        self.models = models
        self.size = size
        self._scores = np.zeros((0, len(models)))
        self._labels = np.zeros(0, bool)
        self._next = 0
        self.seen = 0

    def add(self, scores: np.ndarray, is_fraud: np.ndarray) -> None:
        """Rows of every model's score (``models`` order) and their labels."""
        for lo in range(0, len(is_fraud), self.size):  # a batch larger than the ring wraps
            self._add(scores[lo:lo + self.size], is_fraud[lo:lo + self.size])

    def _add(self, scores: np.ndarray, is_fraud: np.ndarray) -> None:
        k, filled = len(is_fraud), len(self._labels)
        self.seen += k
        if filled < self.size:
            take = min(k, self.size - filled)
            self._scores = np.vstack([self._scores, scores[:take]])
            self._labels = np.concatenate([self._labels, is_fraud[:take]])
            scores, is_fraud, k = scores[take:], is_fraud[take:], k - take
            if not k:
                return
        at = (self._next + np.arange(k)) % self.size
        self._scores[at], self._labels[at] = scores, is_fraud
        self._next = int((at[-1] + 1) % self.size)

    def figures(self, versions: dict[str, str]) -> list[ModelFigures]:
        """Every model's AUC and average precision over the window (None: undefined)."""
        y = self._labels
        n, frauds = len(y), int(y.sum())
        out = []
        for i, model in enumerate(self.models):
            s = self._scores[:, i]
            auc, ap = auc_and_average_precision(y, s) if n else (math.nan, math.nan)
            out.append(ModelFigures(model, versions[model], None if math.isnan(auc) else round(auc, 6),
                                    None if math.isnan(ap) else round(ap, 6), n, frauds))
        return out


@dataclass(frozen=True, slots=True)
class Change:
    """A change of champion, as the audit trail records it."""

    at: float
    action: str  # "promoted" or "configured"
    from_model: str
    to_model: str
    reason: str
    figures: tuple[ModelFigures, ...]

    __setstate__ = restore_fields


@dataclass(slots=True)
class ChampionChallenger:
    """The models' prequential window, the champion and the promotion rule."""

    params: ChampionParams
    models: tuple[str, ...]
    champion: str = ""
    configured: str = ""  # the configured champion this state last applied
    streak: dict[str, int] = field(default_factory=dict)
    evaluation: Prequential = field(init=False)
    figures: tuple[ModelFigures, ...] = ()
    next_evaluation: float | None = None

    __setstate__ = restore_fields

    def __post_init__(self) -> None:
        if not self.champion:
            self.champion = self.configured = self.params.champion
        self.evaluation = Prequential(self.models, self.params.window_labels)

    def observe(self, scores: np.ndarray, is_fraud: np.ndarray) -> None:
        self.evaluation.add(scores, is_fraud)

    def due(self, end: float) -> bool:
        """Whether an evaluation is due at tick end ``end`` (the first one: one period on)."""
        if self.next_evaluation is None:
            self.next_evaluation = end + self.params.evaluate_every_s
            return False
        return end >= self.next_evaluation

    def evaluate(self, end: float, versions: dict[str, str], ready: dict[str, bool]) -> Change | None:
        """The figures as of tick end ``end``, and the change of champion they call for."""
        p = self.params
        self.next_evaluation = end + p.evaluate_every_s
        self.figures = tuple(self.evaluation.figures(versions))
        by_model = {f.model: f for f in self.figures}
        if p.champion != self.configured:  # the operator changed the configured champion
            self.configured = p.champion
            return self._change(end, p.champion, f"configured champion {p.champion!r}", "configured")
        if not p.auto_promote:
            return None
        best: tuple[float, str] | None = None
        champion = by_model[self.champion]
        for model, figures in by_model.items():
            leads = (model != self.champion and ready[model] and figures.labels >= p.min_labels
                     and figures.frauds >= p.min_frauds and _leads(figures, champion, p.margin))
            self.streak[model] = self.streak.get(model, 0) + 1 if leads else 0
            if leads and self.streak[model] >= p.patience and (best is None or (figures.ap or 0.0) > best[0]):
                best = (figures.ap or 0.0, model)
        if best is None:
            return None
        winner = by_model[best[1]]
        return self._change(end, winner.model, (
            f"prequential AP {_f(winner.ap)} against {_f(champion.ap)} (AUC {_f(winner.auc)} against "
            f"{_f(champion.auc)}) over the last {winner.labels} labels, {winner.frauds} frauds, "
            f"at {self.streak[winner.model]} evaluations in a row"), "promoted")

    def _change(self, end: float, to_model: str, reason: str, action: str) -> Change | None:
        if to_model == self.champion:
            return None
        change = Change(end, action, self.champion, to_model, reason, self.figures)
        self.champion = to_model
        self.streak = {}
        return change


def _leads(challenger: ModelFigures, champion: ModelFigures, margin: float) -> bool:
    if challenger.ap is None or challenger.auc is None:
        return False
    if champion.ap is None or champion.auc is None:
        return True
    return challenger.ap >= champion.ap + margin and challenger.auc >= champion.auc - margin


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
