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

Nothing is learned across customers: the priors and the signal weights are parameters
(``[view.churn]``; the priors are close to what BG/NBD fits on CDNOW, the weights were set by
hand on the simulator), and churn feedback only acts on its customer (``retained`` forgives
the exit signals; ``churned`` pins the score to 1). That keeps the state per customer, O(1)
per event and small, and a replay deterministic whatever the number of workers; learning the
weights from feedback would need one global place (the shared scoring step) and is not done.

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

import math
from dataclasses import dataclass
from typing import Final

from schemas.outputs import Reason

DAY: Final = 86400.0

#: App actions that signal a customer on the way out, and their weight names.
EXIT_ACTIONS: Final = {"complaint": "complaint", "account_close_view": "close_view",
                       "transfer_out_view": "transfer_out_view", "unsubscribe": "unsubscribe"}


@dataclass(frozen=True, slots=True)
class ChurnParams:
    """Population priors (days), the horizon and the weights of the behavioural signals."""

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
    recent_gap_weight: float = 0.3  # the exponential average of recent gaps


class ChurnState:
    """One customer's churn evidence: a handful of running numbers (picklable)."""

    __slots__ = ("balance", "first_day", "hazard", "hazard_t", "label", "last_day", "long_gap",
                 "peak_balance", "recent_gap", "seen", "spend", "x")

    def __init__(self) -> None:
        self.first_day: float | None = None  # start of the first active day (seconds)
        self.last_day = 0.0
        self.x = 0  # repeat active days
        self.spend = 0.0
        self.recent_gap: float | None = None  # days
        self.long_gap: float | None = None
        self.hazard = 0.0  # exit signals, decayed to hazard_t
        self.hazard_t = 0.0
        self.balance: float | None = None
        self.peak_balance = 0.0
        self.label: str | None = None
        self.seen: dict[str, int] = {}  # how often each exit signal was shown (a few keys)

    def _add(self, name: str, t: float, params: ChurnParams, scale: float = 1.0) -> None:
        """Add exit signal ``name``, discounted by how often this customer has shown it before:
        the customer who checks the transfer-out page every month is not saying goodbye."""
        times = self.seen.get(name, 0)
        self.seen[name] = times + 1
        weight = getattr(params, f"w_{name}") * scale / (1.0 + times)
        self.hazard = self._hazard(t, params) + weight
        self.hazard_t = max(t, self.hazard_t)

    def _hazard(self, now: float, params: ChurnParams) -> float:
        age = max(0.0, now - self.hazard_t) / (params.signal_halflife_days * DAY)
        return self.hazard * 0.5 ** age

    def observe_activity(self, t: float, amount: float, params: ChurnParams) -> None:
        """A transaction (or session start) at ``t`` of ``amount``."""
        day = math.floor(t / DAY) * DAY
        self.spend += amount
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

    def observe_label(self, label: str) -> None:
        """``churned`` pins the score to 1; ``retained`` forgives the exit signals."""
        if label == "churned":
            self.label = label
        elif label == "retained":
            self.label, self.hazard = None, 0.0

    def reasons(self, now: float, params: ChurnParams) -> list[Reason]:
        """Why the score is what it is, for an alert."""
        out = [Reason("churn_no_activity", f"probability of no activity in the next "
                      f"{params.horizon_days:g} d", round(self.score(now, params), 4), 1.0)]
        if self.first_day is not None and self.long_gap:
            silent = (now - self.last_day) / DAY
            if silent > 2 * max(1.0, self.long_gap):
                out.append(Reason("churn_recency", f"silent {silent:.0f} d against a usual gap of "
                                  f"{self.long_gap:.1f} d", round(silent, 1), 1.0))
        if self.recent_gap and self.long_gap and self.recent_gap > 2 * self.long_gap:
            out.append(Reason("churn_activity_decline", f"recent gap {self.recent_gap:.1f} d against "
                              f"{self.long_gap:.1f} d", round(self.recent_gap / self.long_gap, 2), 1.0))
        hazard = self._hazard(now, params)
        if hazard > 0.1:
            out.append(Reason("churn_exit_signals", "complaints, closing or transfer-out page views, "
                              "unsubscribes, outflows, balance decline", round(hazard, 2), 1.0))
        return out

    def score(self, now: float, params: ChurnParams) -> float:
        """Probability in [0, 1] of no activity in the next ``horizon_days`` after ``now``."""
        if self.label == "churned":
            return 1.0
        if self.first_day is None:
            return 0.0
        x, alpha = self.x, params.alpha_days
        age = max(0.0, now - self.first_day) / DAY  # T
        recency = (self.last_day - self.first_day) / DAY  # t_x
        log_odds = -math.inf
        if x > 0:
            log_odds = (math.log(params.a / (params.b + x - 1.0))
                        + (params.r + x) * math.log((alpha + age) / (alpha + recency)))
        p_alive = 1.0 / (1.0 + math.exp(min(700.0, log_odds))) if x > 0 else 1.0
        rate = p_alive * (params.r + x) / (alpha + age)
        rate *= (1.0 + self.spend / (x + 1)) ** params.monetary_power
        quiet = math.exp(-rate * params.horizon_days)
        if self.hazard == 0.0:
            return quiet
        return 1.0 - (1.0 - quiet) * math.exp(-self._hazard(now, params))
