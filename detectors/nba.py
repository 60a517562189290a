"""Next-best-action: eligible actions only, chosen by a contextual bandit, learned from RM feedback.

On a *trigger moment* of a customer (a product viewed for a while, a large credit, a maturity,
churn risk rising above a level, a login after a long absence) the detector proposes one action
from the catalogue (``config/actions.toml``) to the customer's RM as a :class:`Prompt`.

1. **Eligibility first.** :func:`ineligibility` is a pure function of the customer's facts
   (risk grade, marketing opt-out, open fraud alert), their contact history in event time
   (:class:`NBAState`) and one action; it returns ``None`` (allowed) or the rule that forbids
   the action, checked in this order:

   - ``opt_out``: ``marketing_opt_out`` means no algorithmic recommendation at all, service
     actions included;
   - ``weekly_cap``: at most ``max_prompts_per_week`` prompts in the last 7 days, any action;
   - ``suitability``: a product's risk R1..R5 must not exceed the customer's grade C1..C5 (an
     unknown grade allows no product);
   - ``open_fraud``: no sales action while a fraud alert is open (service actions stay allowed);
   - ``cooldown``: no action within ``cooldown_days`` of the customer dismissing it;
   - ``pending``: not the same action again while an earlier prompt of it awaits an answer;
   - ``trigger``: the action is limited to other trigger moments (a maturity reminder).

   The bandit only ever sees the actions that passed: an ineligible action is never scored.
2. **A contextual bandit** (:class:`LinUCB`, disjoint LinUCB: one ridge regression per action
   of the reward on the context vector, pick the largest ``mean + alpha * width``) chooses among
   the eligible actions given :func:`context_vector` (segment, risk grade, trigger type, the
   category of the product viewed, churn score, recent contact load). It is **one model shared
   by all customers**: a customer answers a handful of prompts a year, too few to learn from
   alone. River 0.26.1 has ``bandit.LinUCBDisjoint``, but it documents itself as too slow for
   real use, has no exploration width parameter and cannot replace a reward already learned;
   this one is numpy, Sherman-Morrison updates, seeded ties, and picklable.
3. **Learning from feedback.** ``nba_accepted`` / ``nba_dismissed`` / ``nba_converted``
   feedback is matched to a pending prompt by ``ref_prompt_id`` (only the customer's own
   prompts match). Reward: converted 1, accepted ``reward_accepted`` (0.3: an RM who accepts
   acts on the prompt, which is worth something to the relationship even without a sale, but
   a conversion is what the bank is after; the value keeps the order converted > accepted >
   dismissed without letting cheap acceptances dominate), dismissed 0, and a prompt that
   expires unanswered counts as 0. Each prompt is one sample of the regression: a later
   answer (accepted, then converted) *revises* that sample's reward (exact for ridge
   regression: ``b += (new - old) x``), it does not add a second sample. A dismissal also
   starts the action's cooldown for that customer.

4. **Fairness** (``detectors.fairness``): at each trigger moment the customer's groups
   (segment, age band, gender, city tier) are counted as eligible (once per window), and
   prompts, acceptances and conversions per group; each closed window is judged against the
   four-fifths rule. An optional score gate (``min_score``) lets a prompt through only when
   the chosen action's upper confidence bound reaches it; the fairness constraint (off by
   default) adds a boost there for under-served groups, adjusted at each window's check.

Score before learn: a prompt is chosen with the model as it was before the trigger's outcome
is known; feedback only ever updates the model after the prompt was emitted.

State: :class:`NBAState` is per customer and bounded (the prompts of the last 7 days, at most
``max_prompts_per_week``; dismissals within the cooldown; at most ``max_pending`` prompts
awaiting an answer, each with its context vector). The policy is one object for all customers
(14 actions x 22 features: about 60 kB pickled). A decision reads the customer's state (the
rules), pulls from the shared policy and writes the state back (the prompt sent), so the step
that holds the policy must also see the customer's state at that moment.

>>> catalogue = (Action("offer_time_deposit", "product", "deposit", 1, "DEP-TD"),
...              Action("offer_equity_fund", "product", "equity", 4, "FND-EQ"),
...              Action("rm_call", "service", "relationship"))
>>> nba = NextBestAction(catalogue, NBAParams(seed=1))
>>> state = NBAState()
>>> facts = CustomerFacts(risk_level=2, segment="affluent", rm_id="rm1")
>>> view = AppEvent("e1", "2026-01-05T10:00:00Z", 1767607200.0, "c1", "product_view",
...                 product_id="FND-EQ", duration_ms=120_000)
>>> prompt = nba.on_event(state, facts, view)
>>> prompt.action in {"offer_time_deposit", "rm_call"}  # the R4 fund is unsuitable for C2
True
>>> ineligibility(catalogue[1], facts, state, nba.trigger_of(state, view), view.t, nba.params)
'suitability'
>>> fb = Feedback("f1", "2026-01-05T12:00:00Z", 1767614400.0, "c1", "nba_converted",
...               ref_prompt_id=prompt.prompt_id)
>>> nba.on_event(state, facts, fb) is None, nba.policy.counts[prompt.action]
(True, 1)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import numpy as np

from detectors.customer import Summary
from detectors.fairness import FairnessParams, FairnessTracker, Groups, groups_of
from schemas.events import AppEvent, Event, Feedback, Transaction
from schemas.outputs import Prompt, Reason, format_ts, prompt_id_for
from schemas.snapshots import restore_fields

TRIGGERS: Final = ("product_view", "large_credit", "maturity", "churn_rising", "login_after_absence")
SEGMENTS: Final = ("mass", "affluent", "private")
# Product categories the context can name (the category of the product a trigger is about).
CATEGORIES: Final = ("deposit", "wealth", "bond", "fund", "equity", "alternative")
RULES: Final = ("opt_out", "weekly_cap", "suitability", "open_fraud", "cooldown", "pending", "trigger")
FEEDBACK_LABELS: Final = ("nba_accepted", "nba_dismissed", "nba_converted")
WEEK: Final = 7 * 86400.0
POLICY_VERSION: Final = "nba-linucb-1"


@dataclass(frozen=True, slots=True)
class Action:
    """One entry of the action catalogue.

    ``risk`` is the product's risk rating 1..5 (R1..R5), 0 for a service action; ``sales`` is
    true for products and false for services unless the catalogue says otherwise.
    """

    action_id: str
    kind: Literal["product", "service"]
    category: str
    risk: int = 0
    product_id: str | None = None
    sales: bool | None = None
    triggers: tuple[str, ...] = ()  # empty: any trigger
    ttl_hours: float = 72.0
    titles: tuple[tuple[str, str], ...] = ()  # (locale, what the RM reads), e.g. ("zh-CN", "推荐定期存款")

    __setstate__ = restore_fields

    def title(self, locale: str) -> str:
        """What the RM reads for this action in ``locale``: the catalogue's title, else the
        English one, else the id with spaces."""
        titles = dict(self.titles)
        return titles.get(locale) or titles.get("en") or self.action_id.replace("_", " ")

    def __post_init__(self) -> None:
        if self.kind not in ("product", "service"):
            raise ValueError(f"action {self.action_id}: kind must be product or service, not {self.kind!r}")
        if self.kind == "product" and not 1 <= self.risk <= 5:
            raise ValueError(f"action {self.action_id}: a product needs risk 1..5, not {self.risk!r}")
        if self.kind == "service" and self.risk != 0:
            raise ValueError(f"action {self.action_id}: a service action has no product risk")
        unknown = set(self.triggers) - set(TRIGGERS)
        if unknown:
            raise ValueError(f"action {self.action_id}: unknown triggers {sorted(unknown)}")
        if self.ttl_hours <= 0:
            raise ValueError(f"action {self.action_id}: ttl_hours must be positive")
        if self.sales is None:
            object.__setattr__(self, "sales", self.kind == "product")


@dataclass(frozen=True, slots=True)
class NBAParams:
    """Triggers, contact rules, rewards and the bandit's exploration."""

    enabled: bool = True
    catalogue: str = ""  # the action catalogue (TOML); "" = config/actions.toml
    open_fraud_days: float = 30.0  # a fraud alert stays open this long unless labelled legit
    view_ms: int = 60_000  # a product_view at least this long is a trigger
    large_credit: float = 50_000.0  # a credit at least this large is a trigger
    # A credit with one of these txn_types, or an app event with action `maturity_notice`
    # (the app telling the customer a product matures), is a maturity trigger.
    maturity_txn_types: tuple[str, ...] = ("deposit_maturity", "product_maturity", "bond_maturity")
    maturity_app_action: str = "maturity_notice"
    churn_level: float = 0.7  # churn score crossing this level upwards is a trigger
    absence_days: float = 30.0  # a login after this long without any event is a trigger
    max_prompts_per_week: int = 2
    cooldown_days: float = 14.0
    max_pending: int = 8  # prompts awaiting an answer kept per customer (oldest dropped)
    reward_accepted: float = 0.3
    alpha: float = 0.6  # exploration width of LinUCB
    ridge: float = 1.0  # prior precision of each action's regression
    seed: int = 0
    # A prompt only when the chosen action's upper confidence bound (mean + alpha * width)
    # reaches this; None: always (the fairness constraint's boost is added before the gate).
    min_score: float | None = None
    fairness: FairnessParams = field(default_factory=FairnessParams)  # detectors.fairness

    __setstate__ = restore_fields


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What eligibility needs to know about the customer (latest profile, open fraud alert)."""

    risk_level: int | None = None
    marketing_opt_out: bool = False
    segment: str | None = None
    rm_id: str | None = None
    open_fraud_alert: bool = False
    groups: Groups = ()  # the customer's group per fairness dimension (empty: not tracked)


@dataclass(frozen=True, slots=True)
class Trigger:
    """A moment worth a prompt: its type, the event behind it and what it is about."""

    type: str
    event_id: str
    ts: str
    t: float
    customer_id: str
    product_id: str | None = None
    category: str | None = None  # of product_id, when the catalogue knows it
    churn_score: float = 0.0
    args: dict[str, Any] = field(default_factory=dict, compare=False)  # what the trigger reason says


@dataclass(frozen=True, slots=True)
class Pending:
    """A prompt awaiting an answer: what the bandit must learn from when it comes."""

    action_id: str
    context: tuple[float, ...]
    expires_t: float
    reward: float | None = None  # the reward learned so far, None before any answer
    groups: Groups = ()  # the customer's fairness groups when prompted (empty: not tracked)

    __setstate__ = restore_fields


@dataclass(frozen=True, slots=True)
class Outcome:
    """A reward for the bandit: learn ``reward`` for ``action_id`` in ``context``; if
    ``previous`` is not None the prompt's sample had that reward and is revised."""

    action_id: str
    context: tuple[float, ...]
    reward: float
    previous: float | None = None


@dataclass(slots=True)
class NBAState:
    """One customer's next-best-action state: bounded (cap, pending) and picklable."""

    sent: list[float] = field(default_factory=list)  # times of prompts in the last 7 days
    dismissed: dict[str, float] = field(default_factory=dict)  # action -> last dismissal time
    pending: dict[str, Pending] = field(default_factory=dict)  # prompt_id -> awaiting answer
    last_seen_t: float | None = None
    churn_score: float = 0.0
    due: float = math.inf  # no pending prompt expires before this event time
    fair_window: int = -1  # the fairness window in which the customer was last counted eligible

    __setstate__ = restore_fields

    def prompts_in_week(self, now: float) -> int:
        n = 0
        for t in self.sent:  # a handful at most: a loop beats a generator here
            if now - WEEK < t <= now:
                n += 1
        return n

    def pending_actions(self, now: float) -> frozenset[str]:
        """The actions of prompts still awaiting an answer at ``now``."""
        if not self.pending:
            return frozenset()
        return frozenset(p.action_id for p in self.pending.values() if p.expires_t > now)

    def forget(self, now: float, params: NBAParams) -> None:
        """Drop what no rule can use any more (prompts older than a week, old dismissals)."""
        if self.sent and min(self.sent) <= now - WEEK:
            self.sent = [t for t in self.sent if t > now - WEEK]
        if self.dismissed:
            cooldown = params.cooldown_days * 86400.0
            self.dismissed = {a: t for a, t in self.dismissed.items() if t > now - cooldown}


def ineligibility(action: Action, facts: CustomerFacts, state: NBAState, trigger: Trigger | None,
                  now: float, params: NBAParams) -> str | None:
    """The first rule (of :data:`RULES`) that forbids ``action`` now, or None if it is allowed.

    >>> p, s = NBAParams(), NBAState()
    >>> fund = Action("offer_fund", "product", "fund", 3, "F1")
    >>> call = Action("rm_call", "service", "relationship")
    >>> ineligibility(fund, CustomerFacts(risk_level=3), s, None, 0.0, p) is None
    True
    >>> ineligibility(fund, CustomerFacts(risk_level=2), s, None, 0.0, p)
    'suitability'
    >>> ineligibility(call, CustomerFacts(risk_level=5, marketing_opt_out=True), s, None, 0.0, p)
    'opt_out'
    >>> fraud = CustomerFacts(risk_level=5, open_fraud_alert=True)
    >>> ineligibility(fund, fraud, s, None, 0.0, p), ineligibility(call, fraud, s, None, 0.0, p)
    ('open_fraud', None)
    """
    return _customer_rule(facts, state, now, params) or _action_rule(
        action, facts, state, trigger, now, params, state.pending_actions(now))


def _customer_rule(facts: CustomerFacts, state: NBAState, now: float, params: NBAParams) -> str | None:
    """The rules that forbid every action at once (checked first)."""
    if facts.marketing_opt_out:
        return "opt_out"
    if state.prompts_in_week(now) >= params.max_prompts_per_week:
        return "weekly_cap"
    return None


def _action_rule(action: Action, facts: CustomerFacts, state: NBAState, trigger: Trigger | None,
                 now: float, params: NBAParams, pending: frozenset[str]) -> str | None:
    """The rules about one action, for a customer no ``_customer_rule`` forbids;
    ``pending``: the actions awaiting an answer (``NBAState.pending_actions``)."""
    if action.kind == "product" and (facts.risk_level is None or action.risk > facts.risk_level):
        return "suitability"
    if action.sales and facts.open_fraud_alert:
        return "open_fraud"
    dismissed = state.dismissed.get(action.action_id)
    if dismissed is not None and now - dismissed < params.cooldown_days * 86400.0:
        return "cooldown"
    if action.action_id in pending:
        return "pending"
    if action.triggers and (trigger is None or trigger.type not in action.triggers):
        return "trigger"
    return None


def context_vector(facts: CustomerFacts, trigger: Trigger, state: NBAState,
                   params: NBAParams) -> tuple[float, ...]:
    """The bandit's context: bias, segment, risk grade, trigger type, category the trigger is
    about (one-hot each), churn score and the week's contact load (0..1).

    >>> v = context_vector(CustomerFacts(risk_level=3, segment="private"),
    ...                    Trigger("maturity", "e", "", 0.0, "c"), NBAState(), NBAParams())
    >>> len(v) == N_FEATURES, v[0], v[1 + SEGMENTS.index("private")], v[4 + 2]
    (True, 1.0, 1.0, 1.0)
    """
    x = [1.0]
    x += [1.0 if facts.segment == s else 0.0 for s in SEGMENTS]
    x += [1.0 if facts.risk_level == r else 0.0 for r in range(1, 6)]
    x += [1.0 if trigger.type == t else 0.0 for t in TRIGGERS]
    x += [1.0 if trigger.category == c else 0.0 for c in CATEGORIES]
    x.append(min(1.0, max(0.0, trigger.churn_score)))
    x.append(min(1.0, state.prompts_in_week(trigger.t) / max(1, params.max_prompts_per_week)))
    return tuple(x)


N_FEATURES: Final = 1 + len(SEGMENTS) + 5 + len(TRIGGERS) + len(CATEGORIES) + 2


class LinUCB:
    """Disjoint LinUCB: per arm, ridge regression of the reward on the context; pull the
    eligible arm with the largest ``x.theta + alpha * sqrt(x' A^-1 x)``.

    ``pull(arms, x)`` only ever considers ``arms`` (the eligible ones); exact ties are broken
    by a seeded generator, so a run is deterministic given the seed and the inputs.

    >>> bandit = LinUCB(n_features=2, alpha=0.5, seed=3)
    >>> rng = random.Random(0)
    >>> for _ in range(400):
    ...     arm = bandit.pull(["a", "b"], (1.0, 0.0))[0]
    ...     bandit.update(arm, (1.0, 0.0), float(rng.random() < (0.6 if arm == "b" else 0.2)))
    >>> bandit.pull(["a", "b"], (1.0, 0.0))[0], bandit.counts["b"] > bandit.counts["a"]
    ('b', True)
    """

    def __init__(self, n_features: int = N_FEATURES, alpha: float = 0.6, ridge: float = 1.0,
                 seed: int = 0) -> None:
        self.n_features = n_features
        self.alpha = alpha
        self.ridge = ridge
        self.seed = seed
        self._rng = random.Random(seed)
        # Every arm's statistics stacked, row i for arm index[i], so that a pull scores all
        # the eligible arms in one numpy call instead of one small product per arm.
        self.index: dict[str, int] = {}
        self._a_inv = np.empty((0, n_features, n_features))  # per arm: (ridge I + sum x x')^-1
        self._b = np.empty((0, n_features))  # per arm: sum reward * x
        self.counts: dict[str, int] = {}
        self.n_updates = 0

    def _arm(self, arm: str) -> int:
        i = self.index.get(arm)
        if i is None:
            i = self.index[arm] = len(self.index)
            eye = np.eye(self.n_features)[None] / self.ridge
            self._a_inv = np.concatenate([self._a_inv, eye])
            self._b = np.concatenate([self._b, np.zeros((1, self.n_features))])
            self.counts[arm] = 0
        return i

    def estimate(self, arm: str, x: Sequence[float]) -> tuple[float, float]:
        """The expected reward of ``arm`` in context ``x`` and the width of its confidence."""
        i = self._arm(arm)
        means, squares = self._estimates(np.asarray(x, dtype=float))
        return means[i], math.sqrt(max(0.0, squares[i]))

    def _estimates(self, v: np.ndarray) -> tuple[list[float], list[float]]:
        """For every arm: the expected reward and the squared width at ``v`` (a few numpy
        calls for all arms at once; the arms are few, the calls' overhead is what counts)."""
        a_inv_v = self._a_inv @ v  # (arms, features)
        return np.einsum("ij,ij->i", a_inv_v, self._b).tolist(), (a_inv_v @ v).tolist()

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]:
        """Choose among ``arms`` (non-empty): the arm, its estimated reward and its width."""
        if not arms:
            raise ValueError("pull needs at least one arm")
        rows = [self._arm(arm) for arm in arms]
        means, squares = self._estimates(np.asarray(x, dtype=float))
        alpha, scored = self.alpha, []
        for arm, i in zip(arms, rows, strict=True):
            width = math.sqrt(max(0.0, squares[i]))
            scored.append((means[i] + alpha * width, arm, means[i], width))
        top = max(item[0] for item in scored)
        best = [item for item in scored if item[0] >= top - 1e-12]
        _, arm, mean, width = best[0] if len(best) == 1 else self._rng.choice(best)
        return arm, mean, width

    def update(self, arm: str, x: Sequence[float], reward: float) -> None:
        """Learn one sample: ``reward`` for ``arm`` in context ``x`` (Sherman-Morrison)."""
        i = self._arm(arm)
        a_inv, v = self._a_inv[i], np.asarray(x, dtype=float)
        a_inv_v = a_inv @ v
        a_inv -= np.outer(a_inv_v, a_inv_v) / (1.0 + float(v @ a_inv_v))
        self._b[i] += reward * v
        self.counts[arm] += 1
        self.n_updates += 1

    def revise(self, arm: str, x: Sequence[float], old: float, new: float) -> None:
        """Replace the reward of a sample already learned (its ``x`` is already in ``A``)."""
        self._b[self._arm(arm)] += (new - old) * np.asarray(x, dtype=float)


class Policy(Protocol):
    """The pull/update discipline a policy follows (:class:`LinUCB`, or a baseline in a bench)."""

    def pull(self, arms: Sequence[str], x: Sequence[float]) -> tuple[str, float, float]: ...
    def update(self, arm: str, x: Sequence[float], reward: float) -> None: ...
    def revise(self, arm: str, x: Sequence[float], old: float, new: float) -> None: ...


def _tracker(params: FairnessParams) -> FairnessTracker | None:
    return FairnessTracker(params) if params.enabled else None


class NextBestAction:
    """Triggers, eligibility, the shared bandit and feedback, for one stream of events.

    The bandit (``policy``, :class:`LinUCB` unless another is given) is the one model shared
    by every customer; each customer's
    :class:`NBAState` is passed in. ``on_event`` handles any event of the customer: a
    feedback answering one of their prompts teaches the bandit, a trigger moment may emit a
    :class:`Prompt`. ``on_churn`` takes the churn score computed elsewhere.
    """

    def __init__(self, catalogue: Iterable[Action], params: NBAParams | None = None,
                 policy: Policy | None = None) -> None:
        self.params = params or NBAParams()
        self._set_catalogue(catalogue)
        self.policy: Policy = policy or LinUCB(N_FEATURES, self.params.alpha, self.params.ridge,
                                               self.params.seed)
        self.fairness = _tracker(self.params.fairness)

    def _set_catalogue(self, catalogue: Iterable[Action]) -> None:
        self.catalogue = tuple(catalogue)
        ids = [a.action_id for a in self.catalogue]
        if len(set(ids)) != len(ids):
            raise ValueError("action ids must be unique in the catalogue")
        self._category_of = {a.product_id: a.category for a in self.catalogue if a.product_id}

    def reconfigure(self, catalogue: Iterable[Action], params: NBAParams) -> None:
        """After a restore: the run's catalogue and settings, keeping what was learned (the
        bandit's arms by action id: a new action starts with a fresh arm) and the fairness
        counts of the window in progress (unless the windows' length changed: then they
        start again at the next event)."""
        self._set_catalogue(catalogue)
        self.params = params
        if isinstance(self.policy, LinUCB):
            self.policy.alpha = params.alpha  # the exploration; the ridge and seed shaped the arms
        tracker, fairness = self.fairness, params.fairness
        if tracker is None or not fairness.enabled or tracker.params.window_days != fairness.window_days:
            self.fairness = _tracker(fairness)
        else:
            tracker.params = fairness

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Also a policy pickled before fairness: a tracker per its params, from now on."""
        self.__dict__.update(state)
        if "fairness" not in state:
            self.fairness = _tracker(self.params.fairness)

    # -- triggers -------------------------------------------------------------------------
    def trigger_of(self, state: NBAState, event: Event) -> Trigger | None:
        """The trigger moment ``event`` is, if any (reads ``state``, never changes it)."""
        p = self.params
        kind: str | None = None
        product_id: str | None = None
        args: dict[str, Any] = {}
        if isinstance(event, Transaction):
            if event.direction == "credit" and event.txn_type in p.maturity_txn_types:
                kind, product_id, args = "maturity", event.product_id, {"source": event.txn_type}
            elif event.direction == "credit" and event.amount >= p.large_credit:
                kind, args = "large_credit", {"amount": event.amount, "currency": event.currency}
        elif isinstance(event, AppEvent):
            if event.action == "product_view" and (event.duration_ms or 0) >= p.view_ms:
                kind, product_id = "product_view", event.product_id
                args = {"product": event.product_id, "seconds": (event.duration_ms or 0) / 1000}
            elif event.action == p.maturity_app_action:
                kind, product_id = "maturity", event.product_id
            elif (event.action == "login" and state.last_seen_t is not None
                  and event.t - state.last_seen_t >= p.absence_days * 86400.0):
                kind = "login_after_absence"
                args = {"days": (event.t - state.last_seen_t) / 86400.0}
        if kind is None:
            return None
        return Trigger(kind, event.event_id, event.ts, event.t, event.customer_id, product_id,
                       self._category_of.get(product_id) if product_id else None, state.churn_score,
                       args)

    # -- the decision ---------------------------------------------------------------------
    def eligible(self, state: NBAState, facts: CustomerFacts, trigger: Trigger) -> list[Action]:
        """The catalogue's actions no rule forbids for this trigger, in catalogue order."""
        t, p = trigger.t, self.params
        if _customer_rule(facts, state, t, p) is not None:
            return []
        pending = state.pending_actions(t)
        return [a for a in self.catalogue if _action_rule(a, facts, state, trigger, t, p, pending) is None]

    def decide(self, state: NBAState, facts: CustomerFacts, trigger: Trigger) -> Prompt | None:
        """Choose among the eligible actions and record the prompt; None if none is eligible."""
        self.expire(state, trigger.t)
        state.forget(trigger.t, self.params)
        actions = self.eligible(state, facts, trigger)
        if not actions:
            return None
        x = context_vector(facts, trigger, state, self.params)
        arm, mean, width = self.policy.pull([a.action_id for a in actions], x)
        fairness, groups = self.fairness, facts.groups
        if self.params.min_score is not None:
            boost = fairness.boost(groups) if fairness is not None and groups else 0.0
            if mean + self.params.alpha * width + boost < self.params.min_score:
                return None
        action = next(a for a in actions if a.action_id == arm)
        prompt_id = prompt_id_for(trigger.event_id, action.action_id)
        expires_t = trigger.t + action.ttl_hours * 3600.0
        state.sent.append(trigger.t)
        if len(state.pending) >= self.params.max_pending:
            del state.pending[next(iter(state.pending))]
        state.pending[prompt_id] = Pending(action.action_id, x, expires_t, None, groups)
        if fairness is not None and groups:
            fairness.prompted(groups)
        state.due = min(state.due, expires_t)
        return Prompt(
            prompt_id=prompt_id, customer_id=trigger.customer_id, rm_id=facts.rm_id,
            action=action.action_id, product_id=action.product_id,
            score=round(min(1.0, max(0.0, mean)), 6),
            reasons=self._reasons(action, facts, trigger, mean, width, len(actions)),
            expires_at=format_ts(expires_t), policy_version=POLICY_VERSION,
            trigger=trigger.type, event_id=trigger.event_id, event_ts=trigger.ts, title=action.title("en"))

    def _reasons(self, action: Action, facts: CustomerFacts, trigger: Trigger, mean: float,
                 width: float, n_eligible: int) -> tuple[Reason, ...]:
        reasons = [Reason.of(f"trigger_{trigger.type}", trigger.product_id, 1.0, **trigger.args)]
        if action.kind == "product":
            reasons.append(Reason.of("suitability", action.risk, 0.0, risk=action.risk, grade=facts.risk_level))
        reasons.append(Reason.of("expected_reward", round(mean, 6), 1.0, mean=mean, eligible=n_eligible))
        reasons.append(Reason.of("exploration", round(width, 6), self.params.alpha))
        return tuple(reasons)

    # -- learning ---------------------------------------------------------------------------
    def learn(self, outcome: Outcome) -> None:
        """Teach the shared bandit one outcome (a new sample or a revised one)."""
        if outcome.previous is None:
            self.policy.update(outcome.action_id, outcome.context, outcome.reward)
        else:
            self.policy.revise(outcome.action_id, outcome.context, outcome.previous, outcome.reward)

    def feedback(self, state: NBAState, fb: Feedback) -> Outcome | None:
        """The outcome a feedback gives, if it answers one of this customer's pending prompts."""
        if fb.label not in FEEDBACK_LABELS or fb.ref_prompt_id is None:
            return None
        pending = state.pending.get(fb.ref_prompt_id)
        if pending is None or pending.expires_t <= fb.t:
            return None  # not this customer's prompt, already answered, or too late
        if fb.label == "nba_dismissed":
            state.dismissed[pending.action_id] = fb.t
            reward = 0.0
        elif fb.label == "nba_converted":
            reward = 1.0
        else:
            reward = self.params.reward_accepted
        if pending.groups and self.fairness is not None and reward > 0.0:
            if pending.reward is None:  # the first positive answer: a conversion implies acceptance
                self.fairness.accepted(pending.groups)
            if fb.label == "nba_converted":
                self.fairness.converted(pending.groups)
        if fb.label == "nba_converted" or fb.label == "nba_dismissed":
            del state.pending[fb.ref_prompt_id]  # a final answer
        else:
            state.pending[fb.ref_prompt_id] = Pending(pending.action_id, pending.context,
                                                      pending.expires_t, reward, pending.groups)
        if pending.reward == reward:
            return None
        return Outcome(pending.action_id, pending.context, reward, pending.reward)

    def expire(self, state: NBAState, now: float) -> None:
        """Settle prompts past their expiry: one never answered is learned as reward 0. An
        answer that comes after the prompt expired is ignored (it starts no cooldown either)."""
        if now < state.due:
            return
        due = math.inf
        for prompt_id, pending in list(state.pending.items()):
            if pending.expires_t <= now:
                del state.pending[prompt_id]
                if pending.reward is None:
                    self.learn(Outcome(pending.action_id, pending.context, 0.0))
            else:
                due = min(due, pending.expires_t)
        state.due = due

    def observe(self, state: NBAState, event: Event) -> Trigger | None:
        """Take one event of the customer: settle expired prompts, learn from a feedback
        that answers one, and return the trigger moment the event is, if any (for
        ``decide``; the customer's facts are only needed then)."""
        self.expire(state, event.t)
        if isinstance(event, Feedback):
            outcome = self.feedback(state, event)
            if outcome is not None:
                self.learn(outcome)
            return None
        if isinstance(event, Transaction | AppEvent):
            trigger = self.trigger_of(state, event)
            state.last_seen_t = event.t if state.last_seen_t is None else max(state.last_seen_t, event.t)
            return trigger
        return None

    def on_event(self, state: NBAState, facts: CustomerFacts, event: Event) -> Prompt | None:
        """Handle one event of the customer: learn from feedback, maybe prompt on a trigger."""
        trigger = self.observe(state, event)
        return self.decide(state, facts, trigger) if trigger is not None else None

    def churn_trigger(self, state: NBAState, score: float, event_id: str, ts: str, t: float,
                      customer_id: str) -> Trigger | None:
        """Take the customer's churn score (computed elsewhere) as of event ``event_id``; a
        rise across ``churn_level`` is a trigger."""
        rising = state.churn_score < self.params.churn_level <= score
        state.churn_score = score
        if not rising:
            return None
        return Trigger("churn_rising", event_id, ts, t, customer_id, churn_score=score, args={"score": score})

    def on_churn(self, state: NBAState, facts: CustomerFacts, score: float, event_id: str, ts: str,
                 t: float, customer_id: str) -> Prompt | None:
        """Take the customer's churn score as of event ``event_id``; prompt if it rose across
        ``churn_level``."""
        trigger = self.churn_trigger(state, score, event_id, ts, t, customer_id)
        return self.decide(state, facts, trigger) if trigger is not None else None


class NextBestActions:
    """Next-best action for a whole stream: the one policy, every customer's contact state,
    and when each customer's last fraud alert was.

    The engine keeps it in its shared step, where the bandit and the fraud alerts are: a
    decision reads the customer's contact state, pulls from the shared bandit and writes
    the prompt back into that state. A fraud alert stays open for ``open_fraud_days`` of
    event time, or until a ``legit`` label for the customer.

    Most events cannot matter (debits, page views, short product views): they are let go
    at once, before any state is touched. A customer's expired prompts are settled (and
    learned as reward 0) at their next event that does matter. The customer's facts are
    built only when an event is a trigger moment.
    """

    def __init__(self, actions: tuple[Action, ...], params: NBAParams) -> None:
        self.policy = NextBestAction(actions, params)
        self.states: dict[str, NBAState] = {}
        self.fraud_alert_t: dict[str, float] = {}  # customer -> time of their last fraud alert

    def reconfigure(self, actions: tuple[Action, ...], params: NBAParams) -> None:
        """After a restore: the run's catalogue and settings (``NextBestAction.reconfigure``)."""
        self.policy.reconfigure(actions, params)

    def matters(self, event: Event, summary: Summary) -> bool:
        """Whether ``event`` may be a trigger moment or feedback that changes something
        (cheap: no state read but the open fraud alerts)."""
        p = self.policy.params
        if isinstance(event, Transaction):
            return event.direction == "credit" and (event.amount >= p.large_credit
                                                    or event.txn_type in p.maturity_txn_types)
        if isinstance(event, AppEvent):
            action = event.action
            if action == "login":  # a trigger only after a long absence
                return summary.prev_t is None or event.t - summary.prev_t >= p.absence_days * 86400.0
            return action == p.maturity_app_action or (
                action == "product_view" and (event.duration_ms or 0) >= p.view_ms)
        if isinstance(event, Feedback):
            return event.label in FEEDBACK_LABELS or (
                event.label == "legit" and event.customer_id in self.fraud_alert_t)
        return False

    def on_event(self, event: Event, summary: Summary, alerted: bool,
                 churn_score: float | None = None) -> Prompt | None:
        """The prompt ``event`` triggers, if any; ``alerted``: it raised a fraud alert;
        ``churn_score``: the customer's churn score as of the event, if it was updated (a rise
        across ``churn_level`` is a trigger when the event itself is not one)."""
        matters = alerted or self.matters(event, summary)
        if not matters and churn_score is None:
            return None
        customer = event.customer_id
        state = self.states.get(customer)
        if state is None:
            state = self.states[customer] = NBAState()
        if not matters:  # only a new churn score: a trigger if it rose across the level
            assert churn_score is not None
            if not state.churn_score < self.policy.params.churn_level <= churn_score:
                state.churn_score = churn_score
                return None
        if alerted:
            self.fraud_alert_t[customer] = event.t
        elif isinstance(event, Feedback) and event.label == "legit":
            self.fraud_alert_t.pop(customer, None)
        if summary.prev_t is not None and (state.last_seen_t is None or summary.prev_t > state.last_seen_t):
            state.last_seen_t = summary.prev_t  # the events let go count as seen
        fairness = self.policy.fairness
        if fairness is not None:
            fairness.advance(event.t, event.event_id, event.ts)  # may close (and judge) a window
        trigger = self.policy.observe(state, event)
        if churn_score is not None:
            rising = self.policy.churn_trigger(state, churn_score, event.event_id, event.ts, event.t, customer)
            trigger = trigger or rising
        if trigger is None:
            return None
        opened = self.fraud_alert_t.get(customer)
        open_days = self.policy.params.open_fraud_days
        groups: Groups = ()
        if fairness is not None and not summary.marketing_opt_out:
            groups = groups_of(summary.segment, *summary.traits, event.t, fairness.params)
            if state.fair_window != fairness.window:  # a customer seen at a trigger moment, once a window
                state.fair_window = fairness.window  # type: ignore[assignment]
                fairness.eligible(groups)
        facts = CustomerFacts(summary.risk_level, summary.marketing_opt_out, summary.segment, summary.rm_id,
                              opened is not None and event.t - opened < open_days * 86400.0, groups)
        return self.policy.decide(state, facts, trigger)
