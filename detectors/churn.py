"""Churn risk per customer: how likely the customer is to do nothing in the next horizon.

The transactions-only core is the BG/NBD story (Fader, Hardie and Lee 2005) told per
customer with fixed population priors instead of a fitted population: while "alive" a
customer is active on days at rate ``lambda ~ Gamma(r, alpha)``, and after each active day
may leave for good with probability ``p ~ Beta(a, b)``. With ``x`` repeat active days, the
last at age ``t_x`` and the customer now at age ``T`` (all event time), the posterior gives

    P(alive) = 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))   (x > 0)
    rate now = P(alive) * (r + x) / (alpha + T)

so recency is judged against the customer's own rhythm, frequency and tenure shrink towards
the prior, and a one-off customer fades with age. Spend per active day scales the rate by
``(1 + spend) ** monetary_power`` (bigger customers come back more often: on the CDNOW
history this ranks better than BG/NBD's own expected purchases; ``bench.churn_holdout``).

Behaviour, when the bank sees it, is a ``hazard``: a weighted sum of exit signals that
decay with ``signal_halflife_days``, each discounted by how often the customer showed it
before (behaviour against their own baseline): complaints, views of the account-closing and
transfer-out pages, unsubscribes, money moved out (a debit transfer draining most of the
balance), the balance falling below half its peak, and activity decline (the recent gap
between active days, an exponential average, against the long-run gap). The score is
``1 - (1 - quiet) * exp(-hazard)``, with ``quiet = exp(-rate * horizon)`` the probability of
no activity in the next ``horizon_days`` at the current rate: the exit signals are odds of
leaving on top of what the rhythm says. 1 is "gone", 0 is "certainly staying"; a high score
is indicative of churn. A customer who says they are leaving (a look at the closing page
after a complaint) scores high while still active, which is where lead time comes from; the
rhythm alone only speaks once the silence is long.

At the end of a replay the four priors can be fitted to the whole history by maximum
likelihood (:func:`fit_priors`, ``detectors.bgnbd``) and the final states scored with them:
fixed priors suit one business's rhythm and not another's.

What is learned across customers (:class:`ChurnModel`, one for the whole stream, kept by
the engine's shared step): a logistic correction of that score from ``churned`` / ``retained``
feedback. Its inputs are the score's log-odds and each exit signal, as they stood one horizon
before the label (what a prediction then would have seen); it starts as the identity (the
score unchanged) and is pulled back towards it, so a few labels nudge the weights and no
labels change nothing. Per customer, ``retained`` forgives the exit signals and ``churned``
pins the score to 1. The per-customer state (:class:`ChurnState`) is O(1) per event and small;
the evidence it hands on (:class:`ChurnEvidence`) is all the shared model and the alerting need.

Figures: ``python -m bench.churn_holdout --cdnow`` and ``python run.py evaluate`` (README,
"Churn risk").

>>> p = ChurnParams()
>>> c = ChurnState()
>>> for day in range(0, 120, 2):
...     c.observe_activity(day * 86400.0, 50.0, p)
>>> active, quiet = c.score(120 * 86400.0, p), c.score(150 * 86400.0, p)
>>> active < 0.2 < 0.9 < quiet
True
>>> c.observe_signal("account_close_view", 120 * 86400.0, p)
True
>>> c.score(120 * 86400.0, p) > active
True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import numpy as np

from schemas.outputs import Reason
from schemas.snapshots import restore_fields

if TYPE_CHECKING:
    from detectors.bgnbd import BGNBD

log = logging.getLogger(__name__)

DAY: Final = 86400.0

#: App actions that signal a customer on the way out, and their signal names.
EXIT_ACTIONS: Final = {"complaint": "complaint", "account_close_view": "close_view",
                       "transfer_out_view": "transfer_out_view", "unsubscribe": "unsubscribe"}
#: Every exit signal, in the order of :attr:`ChurnEvidence.signals` (weights ``w_<name>``).
SIGNALS: Final = ("complaint", "close_view", "transfer_out_view", "unsubscribe", "outflow",
                  "balance_decline", "activity_decline", "voice_negative", "voice_exit_intent",
                  "voice_regulator")
#: What a customer's text says (``detectors.voice`` intents) -> the exit signal it adds.
VOICE_SIGNALS: Final = {"regulator_complaint": "voice_regulator", "close_account": "voice_exit_intent",
                        "transfer_out": "voice_exit_intent"}
_SIGNAL_INDEX: Final = {name: i for i, name in enumerate(SIGNALS)}
NO_SIGNALS: Final = (0.0,) * len(SIGNALS)
CHURN_LABELS: Final = frozenset({"churned", "retained"})


@dataclass(frozen=True, slots=True)
class ChurnParams:
    """Population priors (days), the horizon, the weights of the behavioural signals, and how
    the shared model learns from labels."""

    r: float = 0.25  # Gamma shape of the activity rate
    alpha_days: float = 31.5  # Gamma scale (in days) of the activity rate
    a: float = 1.0  # Beta prior of the drop-out probability per active day
    b: float = 4.0
    monetary_power: float = 0.2
    horizon_days: float = 30.0
    signal_halflife_days: float = 30.0
    w_complaint: float = 1.6
    w_close_view: float = 1.5
    w_transfer_out_view: float = 0.3
    w_unsubscribe: float = 0.7
    w_outflow: float = 0.5
    w_balance_decline: float = 0.4
    w_activity_decline: float = 1.0
    w_voice_negative: float = 0.6  # a negative text, scaled by how negative (detectors.voice)
    w_voice_exit_intent: float = 1.0  # a text saying the customer closes the account or moves money out
    w_voice_regulator: float = 0.8  # a text naming the regulator
    recent_gap_weight: float = 0.3  # the exponential average of recent gaps
    learning_rate: float = 0.05  # ChurnModel: step per label
    l2: float = 0.01  # ChurnModel: pull of the weights back towards the prior's
    min_labels: int = 20  # ChurnModel: the prior's score stands until this many labels
    # At the end of a replay, fit r, alpha, a and b to every customer's history (BG/NBD,
    # maximum likelihood) and score the final customer states with them.
    fit_priors: bool = True
    fit_min_customers: int = 200


@lru_cache(maxsize=8)
def _weights(params: ChurnParams) -> tuple[float, ...]:
    return tuple(getattr(params, f"w_{name}") for name in SIGNALS)


@dataclass(slots=True)  # per event: see schemas.events on "frozen"
class ChurnEvidence:
    """A customer's churn evidence as of event time ``t``: what scoring, learning and the
    alert's reasons need, handed from the per-customer state to the shared model."""

    t: float
    quiet: float  # P(no activity in the horizon) from the rhythm alone
    signals: tuple[float, ...]  # exit signals as of the latest one, unweighted (SIGNALS order)
    decay: float  # the factor they have decayed by since, to t
    hazard: float  # the weighted exit signals at t: odds of leaving on top of the rhythm
    active_days: int  # repeat active days
    silent_days: float  # since the last active day
    usual_gap: float | None  # the long-run gap between active days (days)
    recent_gap: float | None  # the recent gap, an exponential average (days)
    churned: bool = False  # labelled churned: the score is 1
    quote: tuple[str, str] | None = None  # (exit signal, masked phrase) of the latest telling text

    __setstate__ = restore_fields

    def exit_signals(self) -> tuple[float, ...]:
        """The exit signals, decayed to ``t`` (SIGNALS order)."""
        decay = self.decay
        return self.signals if decay == 1.0 else tuple(s * decay for s in self.signals)

    def reasons(self, score: float, params: ChurnParams) -> list[Reason]:
        """Why the score is what it is, for an alert."""
        out = [Reason.of("churn_no_activity", round(score, 4), 1.0, horizon_days=params.horizon_days)]
        if self.usual_gap and self.silent_days > 2 * max(1.0, self.usual_gap):
            out.append(Reason.of("churn_recency", round(self.silent_days, 1), 1.0,
                                 silent_days=self.silent_days, usual_gap=self.usual_gap))
        if self.recent_gap and self.usual_gap and self.recent_gap > 2 * self.usual_gap:
            out.append(Reason.of("churn_activity_decline", round(self.recent_gap / self.usual_gap, 2), 1.0,
                                 recent_gap=self.recent_gap, usual_gap=self.usual_gap))
        if self.hazard > 0.1:
            shown = [[name, round(w * s, 4)] for name, w, s
                     in sorted(zip(SIGNALS, _weights(params), self.exit_signals(), strict=True),
                               key=lambda item: -item[1] * item[2]) if w * s > 0.05]
            out.append(Reason.of("churn_exit_signals", round(self.hazard, 2), 1.0, signals=shown))
            if self.quote is not None:
                signal, phrase = self.quote
                out.append(Reason.of("churn_voice", phrase, 1.0, signal=signal, phrase=phrase))
        return out


def prior_score(evidence: ChurnEvidence) -> float:
    """``1 - (1 - quiet) * exp(-hazard)``: the score from the priors and fixed weights."""
    if evidence.churned:
        return 1.0
    if evidence.hazard == 0.0:
        return evidence.quiet
    return 1.0 - (1.0 - evidence.quiet) * math.exp(-evidence.hazard)


def _quiet(x: int, recency: float, age: float, spend_per_day: float, params: ChurnParams) -> float:
    """P(no activity in the next ``horizon_days``) from the rhythm alone: the BG/NBD posterior
    of a customer with ``x`` repeat active days, the last at ``recency`` and now at ``age``
    (days since the first), its rate scaled by the spend per active day."""
    alpha = params.alpha_days
    p_alive = 1.0
    if x > 0:
        log_odds = (math.log(params.a / (params.b + x - 1.0))
                    + (params.r + x) * math.log((alpha + age) / (alpha + recency)))
        p_alive = 1.0 / (1.0 + math.exp(min(700.0, log_odds)))
    rate = p_alive * (params.r + x) / (alpha + age)
    rate *= (1.0 + spend_per_day) ** params.monetary_power
    return math.exp(-rate * params.horizon_days)


@dataclass(frozen=True, slots=True)
class Rhythm:
    """A customer's activity in BG/NBD's terms (days), for fitting the population priors."""

    x: int  # repeat active days
    recency: float  # t_x: from the first active day to the last
    age: float  # T: from the first active day to now
    spend_per_day: float

    def requiet(self, evidence: ChurnEvidence, params: ChurnParams) -> ChurnEvidence:
        """``evidence`` with its rhythm term recomputed under ``params`` (fitted priors)."""
        return replace(evidence, quiet=_quiet(self.x, self.recency, self.age, self.spend_per_day, params))


def fit_priors(rhythms: Sequence[Rhythm], params: ChurnParams) -> ChurnParams:
    """``params`` with r, alpha, a and b fitted to ``rhythms`` by maximum likelihood (BG/NBD),
    starting from the configured ones; bounded in its parameters and its time whatever the
    data (``detectors.bgnbd``: a tenth of a second for CDNOW's 23,570 customers). A fit that
    stops at a bound, at the Poisson limit or out of evaluations says so in the log.

    Customers active at one steady rate are the Poisson limit: r held at its bound, the mean
    rate r / alpha fitted.

    >>> steady = [Rhythm(x=30, recency=60.0, age=60.0, spend_per_day=20.0)] * 500  # every other day
    >>> fitted = fit_priors(steady, ChurnParams())
    >>> round(fitted.r), round(fitted.r / fitted.alpha_days, 2)
    (1000, 0.5)
    """
    from detectors.bgnbd import fit_bgnbd  # scipy: only when fitting

    started = time.perf_counter()
    fit = fit_bgnbd(np.fromiter((h.x for h in rhythms), dtype=float, count=len(rhythms)),
                    np.fromiter((h.recency for h in rhythms), dtype=float, count=len(rhythms)),
                    np.fromiter((h.age for h in rhythms), dtype=float, count=len(rhythms)),
                    start=(params.r, params.alpha_days, params.a, params.b))
    fitted = replace(params, r=fit.r, alpha_days=fit.alpha, a=fit.a, b=fit.b)
    log.info("churn prior fit: %d customers, %d distinct rhythms, %d evaluations, %.3f s", fit.customers,
             fit.rhythms, fit.evaluations, time.perf_counter() - started)
    for message in _fit_limits(fit, fitted):
        log.info("churn prior fit: %s", message)
    if not fit.converged:
        log.warning("churn prior fit: stopped after %d evaluations of the likelihood without converging; "
                    "the best priors found are used", fit.evaluations)
    return fitted


def _fit_limits(fit: BGNBD, p: ChurnParams) -> list[str]:
    """What the parameters at a bound mean, in words."""
    rate, drop_out = p.r / p.alpha_days, p.a / (p.a + p.b)
    meaning = {
        ("r", "upper"): f"every customer's activity rate is about r/alpha_days = {rate:.4g} active days a day "
                        f"(the Poisson limit)",
        ("r", "lower"): "the activity rates are as spread as the bound allows",
        ("alpha", "upper"): f"hardly any repeat activity (r/alpha_days = {rate:.3g} active days a day)",
        ("alpha", "lower"): f"very frequent activity (r/alpha_days = {rate:.4g} active days a day)",
        ("a", "upper"): f"the drop-out probability is about a/(a+b) = {drop_out:.4g} per active day for every "
                        f"customer",
        ("a", "lower"): f"hardly anyone drops out (a/(a+b) = {drop_out:.3g} per active day)",
        ("b", "upper"): f"small drop-out probabilities (a/(a+b) = {drop_out:.4g} per active day on average)",
        ("b", "lower"): f"most customers drop out after an active day (a/(a+b) = {drop_out:.3g})",
    }
    value = {"r": p.r, "alpha": p.alpha_days, "a": p.a, "b": p.b}
    label = {"alpha": "alpha_days"}
    return [f"{label.get(name, name)} at its {side} bound {value[name]:.6g}: {meaning[name, side]}"
            for side, names in (("upper", fit.at_upper), ("lower", fit.at_lower)) for name in names]


class ChurnState:
    """One customer's churn evidence: a handful of running numbers (picklable)."""

    __slots__ = ("balance", "first_day", "history", "label", "last_day", "long_gap", "peak_balance",
                 "quote", "recent_gap", "seen", "signal_t", "signals", "spend", "weighted", "x")

    def __init__(self) -> None:
        self.first_day: float | None = None  # start of the first active day (seconds)
        self.last_day = 0.0
        self.x = 0  # repeat active days
        self.spend = 0.0
        self.recent_gap: float | None = None  # days
        self.long_gap: float | None = None
        self.signals: tuple[float, ...] = NO_SIGNALS  # exit signals, decayed to signal_t
        self.weighted = 0.0  # their weighted sum, at signal_t
        self.signal_t = 0.0
        self.balance: float | None = None
        self.peak_balance = 0.0
        self.label: str | None = None
        self.seen: dict[str, int] = {}  # how often each exit signal was shown (a few keys)
        # Weekly evidence snapshots, the oldest at or just before one horizon ago: what a
        # label teaches the shared model (ChurnModel) is the evidence as it stood then.
        self.history: list[ChurnEvidence] = []
        self.quote: tuple[str, str] | None = None  # the latest telling text (signal, masked phrase)

    def _decay(self, now: float, params: ChurnParams) -> float:
        """The factor the signals have decayed by from ``signal_t`` to ``now``."""
        if now <= self.signal_t:
            return 1.0
        return 0.5 ** ((now - self.signal_t) / (params.signal_halflife_days * DAY))

    def _decayed(self, now: float, params: ChurnParams) -> tuple[float, ...]:
        if self.signals is NO_SIGNALS:
            return NO_SIGNALS
        factor = self._decay(now, params)
        return self.signals if factor == 1.0 else tuple(s * factor for s in self.signals)

    def _add(self, name: str, t: float, params: ChurnParams, scale: float = 1.0) -> None:
        """Add exit signal ``name``, discounted by how often this customer has shown it before:
        the customer who checks the transfer-out page every month is not saying goodbye."""
        times = self.seen.get(name, 0)
        self.seen[name] = times + 1
        signals = list(self._decayed(t, params))
        signals[_SIGNAL_INDEX[name]] += scale / (1.0 + times)
        self.signals, self.signal_t = tuple(signals), max(t, self.signal_t)
        self.weighted = sum(w * s for w, s in zip(_weights(params), self.signals, strict=True))

    def observe_activity(self, t: float, amount: float, params: ChurnParams) -> None:
        """A transaction (or session start) at ``t`` of ``amount``."""
        self.spend += amount
        if self.last_day <= t < self.last_day + DAY and self.first_day is not None:
            return  # another event of the latest active day
        day = math.floor(t / DAY) * DAY
        if self.first_day is None:
            self.first_day = self.last_day = day
            return
        if day <= self.last_day:
            return
        gap = (day - self.last_day) / DAY
        self.x += 1
        self.last_day = day
        w = params.recent_gap_weight
        self.recent_gap = gap if self.recent_gap is None else (1 - w) * self.recent_gap + w * gap
        self.long_gap = (day - self.first_day) / DAY / self.x
        if self.x >= 5 and self.long_gap > 0 and self.recent_gap > 2 * self.long_gap:
            self._add("activity_decline", t, params, min(1.0, self.recent_gap / self.long_gap / 4))

    def observe_outflow(self, t: float, amount: float, balance_after: float | None,
                        params: ChurnParams) -> None:
        """A debit transfer: draining most of the balance is a way out; so is a falling balance."""
        if balance_after is not None:
            if balance_after + amount > 0 and amount / (balance_after + amount) > 0.6:
                self._add("outflow", t, params)
            if self.peak_balance > 0 and balance_after < 0.5 * self.peak_balance <= (self.balance or 0.0):
                self._add("balance_decline", t, params)
            self.balance = balance_after
            self.peak_balance = max(self.peak_balance, balance_after)

    def observe_balance(self, balance_after: float) -> None:
        """A credit's balance: it raises the peak the decline is measured against."""
        self.balance = balance_after
        self.peak_balance = max(self.peak_balance, balance_after)

    def observe_signal(self, action: str, t: float, params: ChurnParams) -> bool:
        """An app action; exit actions add to the hazard (and say so)."""
        name = EXIT_ACTIONS.get(action)
        if name is None:
            return False
        self._add(name, t, params)
        return True

    def observe_voice(self, sentiment: float, negative: bool, intents: tuple[str, ...], phrase: str, t: float,
                      params: ChurnParams) -> bool:
        """A customer's text (``detectors.voice``): its exit intents and, if it reads negative,
        its sentiment add to the hazard, the phrase quoted in the reasons."""
        names = list(dict.fromkeys(VOICE_SIGNALS[i] for i in intents if i in VOICE_SIGNALS))
        for name in names:
            self._add(name, t, params)
        if negative:
            self._add("voice_negative", t, params, min(1.0, -sentiment))
            names.append("voice_negative")
        if names:
            self.quote = (names[0], phrase)
        return bool(names)

    def observe_label(self, label: str, t: float, params: ChurnParams) -> ChurnEvidence | None:
        """``churned`` pins the score to 1; ``retained`` forgives the exit signals. Returns
        the evidence the label should teach the shared model (one horizon before ``t``), if
        the customer has any."""
        if label not in CHURN_LABELS:
            return None
        before = self.evidence_before(t - params.horizon_days * DAY)
        if label == "churned":
            self.label = label
        else:
            self.label, self.signals, self.weighted, self.quote = None, NO_SIGNALS, 0.0, None
        return before

    def evidence(self, now: float, params: ChurnParams) -> ChurnEvidence:
        """The evidence as of ``now`` (also kept as a weekly snapshot for the labels)."""
        if self.first_day is None:
            return ChurnEvidence(now, 0.0, NO_SIGNALS, 1.0, 0.0, 0, 0.0, None, None, self.label == "churned")
        x = self.x
        age = max(0.0, now - self.first_day) / DAY  # T
        recency = (self.last_day - self.first_day) / DAY  # t_x
        quiet = _quiet(x, recency, age, self.spend / (x + 1), params)
        decay = self._decay(now, params) if self.signals is not NO_SIGNALS else 1.0
        evidence = ChurnEvidence(now, quiet, self.signals, decay,
                                 self.weighted * decay,
                                 x, (now - self.last_day) / DAY, self.long_gap, self.recent_gap,
                                 self.label == "churned", self.quote)
        history = self.history
        if not history or now - history[-1].t >= 7 * DAY:
            history.append(evidence)
            while len(history) > 1 and history[1].t <= now - params.horizon_days * DAY:
                del history[0]
        return evidence

    def history_summary(self, now: float) -> Rhythm | None:
        """The customer's rhythm as of ``now`` (for fitting the priors); None before any activity."""
        if self.first_day is None:
            return None
        return Rhythm(self.x, (self.last_day - self.first_day) / DAY, max(0.0, now - self.first_day) / DAY,
                      self.spend / (self.x + 1))

    def __getstate__(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, object] | tuple[None, dict[str, object]]) -> None:
        """Also a state pickled before the latest exit signals were added: theirs start at 0."""
        self.__init__()  # type: ignore[misc]
        for name, value in (state[1] if isinstance(state, tuple) else state).items():
            setattr(self, name, value)
        if len(self.signals) < len(SIGNALS):
            self.signals = _padded(self.signals)
            for evidence in self.history:
                evidence.signals = _padded(evidence.signals)

    def evidence_before(self, t: float) -> ChurnEvidence | None:
        """The latest snapshot at or before ``t``, else the oldest kept (None if none)."""
        at_or_before = [e for e in self.history if e.t <= t]
        if at_or_before:
            return at_or_before[-1]
        return self.history[0] if self.history else None

    def score(self, now: float, params: ChurnParams) -> float:
        """The prior's probability in [0, 1] of no activity in the next ``horizon_days``."""
        return prior_score(self.evidence(now, params))


def _padded(signals: tuple[float, ...]) -> tuple[float, ...]:
    return (*signals, *(0.0,) * (len(SIGNALS) - len(signals)))


def _logit(p: float) -> float:
    p = min(1.0 - 1e-6, max(1e-6, p))
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, z))))


class ChurnModel:
    """What ``churned`` / ``retained`` feedback teaches across customers: a logistic
    correction of the prior's score, ``sigmoid(b + w0 * logit(prior) + sum(w_k * signal_k))``.

    It starts as the identity (``b = 0``, ``w0 = 1``, ``w_k = 0``). Each label is one step of
    AdaGrad on the log loss with an L2 pull back towards the identity: per-weight step sizes
    keep the log-odds input (tens) and the signals (about 1) on one footing, and shrink as a
    weight's evidence accumulates. Until ``min_labels`` labels the prior's score stands
    unchanged. One object for all customers: the engine's shared step keeps it (a few floats).

    >>> p = ChurnParams(min_labels=1)
    >>> model = ChurnModel()
    >>> quiet = ChurnEvidence(0.0, 0.3, NO_SIGNALS, 1.0, 0.0, 10, 3.0, 2.0, 2.0)
    >>> viewed = ChurnEvidence(0.0, 0.3, (0.0, 0.0, 1.0, *(0.0,) * 7), 1.0, 0.3, 10, 3.0, 2.0, 2.0)
    >>> model.score(viewed, p) == prior_score(viewed)  # nothing learned yet
    True
    >>> for _ in range(200):
    ...     model.learn(viewed, True, p)
    ...     model.learn(quiet, False, p)
    >>> model.score(viewed, p) > prior_score(viewed), model.score(quiet, p) < prior_score(quiet)
    (True, True)
    """

    __slots__ = ("n", "squares", "weights")

    IDENTITY: Final = (0.0, 1.0, *NO_SIGNALS)

    def __init__(self) -> None:
        self.weights = list(self.IDENTITY)
        self.squares = [1e-8] * len(self.IDENTITY)  # AdaGrad: the sum of squared gradients
        self.n = 0  # labels learned

    @staticmethod
    def _inputs(evidence: ChurnEvidence) -> tuple[float, ...]:
        return (1.0, _logit(prior_score(evidence)), *evidence.exit_signals())

    def score(self, evidence: ChurnEvidence, params: ChurnParams) -> float:
        """The churn score in [0, 1] (``_inputs`` spelled out: this runs for most events)."""
        prior = prior_score(evidence)
        if self.n < params.min_labels or evidence.churned:
            return prior
        w = self.weights
        z = w[0] + w[1] * _logit(prior)
        if evidence.signals is not NO_SIGNALS:
            z += evidence.decay * sum(wk * sk for wk, sk in zip(w[2:], evidence.signals, strict=True))
        return _sigmoid(z)

    def learn(self, evidence: ChurnEvidence, churned: bool, params: ChurnParams) -> None:
        """One label: the customer ``churned`` (or was retained), given ``evidence`` from before."""
        inputs = self._inputs(evidence)
        error = _sigmoid(sum(w * x for w, x in zip(self.weights, inputs, strict=True))) - float(churned)
        rate, l2 = params.learning_rate, params.l2
        for i, (w, x, w0) in enumerate(zip(self.weights, inputs, self.IDENTITY, strict=True)):
            gradient = error * x + l2 * (w - w0)
            self.squares[i] += gradient * gradient
            self.weights[i] = w - rate * gradient / math.sqrt(self.squares[i])
        self.n += 1

    def __getstate__(self) -> tuple[list[float], list[float], int]:
        return (self.weights, self.squares, self.n)

    def __setstate__(self, state: tuple[list[float], list[float], int]) -> None:
        self.weights, self.squares, self.n = state
        # A state from before the latest exit signals: those start where the identity has them.
        missing = len(self.IDENTITY) - len(self.weights)
        if missing > 0:
            self.weights = [*self.weights, *self.IDENTITY[-missing:]]
            self.squares = [*self.squares, *[1e-8] * missing]
