"""The event stream: customers' ordinary behaviour with injected cases, merged in time order.

``generate_with_truth(config)`` yields ``(event, truth)`` pairs in non-decreasing ``ts`` order;
``truth`` is a dict for every ``transaction`` (``event_id``, ``customer_id``, ``ts``,
``is_fraud``, ``typology``, ``case_id``) and ``None`` for other kinds. ``generate(config)``
yields just the events, ``write_jsonl`` records them (and the truth) to JSONL files.

The stream opens with one ``profile`` event per customer at ``config.start``. After that, each
customer is a handful of pending items (their next transaction, next app session, next salary
or loan date, and any scripted steps) in a small per-customer heap, and a global heap holds
each customer's earliest item; a third heap holds delayed feedback labels. Nothing is generated
before it is due, so memory grows with the number of customers, never with the number of
events. One ``random.Random(seed)`` drives everything in emission order, so the same config
always gives byte-identical output; the wall clock is never read.

**Closed loop.** A ``Simulation`` given a ``Responder`` (``simulator.responder``) also answers
the next-best-action prompts it is handed (``Simulation.answer(prompt)``, safe to call from
another thread): the answers (``nba_accepted`` / ``nba_converted`` / ``nba_dismissed``
feedback with ``ref_prompt_id``) join the feedback heap and come out in event-time order with
everything else; an answer due before the simulation's current time comes out at the current
time (the stream never goes back in time), one due after the end never. Answers take no draw
from the simulation's generator and no event number (their ids derive from the prompt's), so
the simulation's own events are the same, with the same ids, whether or not prompts are
answered.

>>> cfg = SimulatorConfig(customers=3, days=2, seed=1)
>>> events = list(generate(cfg))
>>> [e["kind"] for e in events[:3]]
['profile', 'profile', 'profile']
>>> events[0]["ts"], events[0]["event_id"]
('2026-01-05T00:00:00.000Z', 'e-1-1')
>>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
True
"""

from __future__ import annotations

import gzip
import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BufferedIOBase
from pathlib import Path
from typing import Any, Final

import orjson

from schemas.events import parse_timestamp
from schemas.outputs import Prompt
from simulator import churn
from simulator.population import (
    FUND_PRODUCTS,
    HOME_COUNTRY,
    MERCHANT_CATEGORIES,
    PRODUCT_CATEGORY,
    STOCK_PRODUCTS,
    TXN_TYPES,
    WEALTH_PRODUCTS,
    Customer,
    Pools,
    atm_id,
    build_customer,
    employer_id,
    merchant_category,
    merchant_id,
    payee_id,
    profile_fields,
)
from simulator.responder import Responder, Response
from simulator.typologies import (
    DAY_MS,
    DORMANT_REACTIVATION,
    DORMANT_SILENCE_DAYS,
    HOUR_MS,
    LOCAL_UTC_OFFSET_MS,
    SECOND_MS,
    Case,
    ScriptedTxn,
    Step,
    available_typologies,
    foreign_merchant,
    foreign_merchant_count,
    local_hour,
    plan_case,
)
from simulator.voice import VOICE_TRIGGERS, ordinary_text_due, voice_event

Event = dict[str, Any]
Truth = dict[str, Any]

#: Hour-of-week (Monday 00:00 local = 0) of the Unix epoch, a Thursday, at UTC+8.
_EPOCH_HOUR_OF_WEEK: Final = 3 * 24 + LOCAL_UTC_OFFSET_MS // HOUR_MS

# Relative activity per local hour: almost nothing at night, peaks at lunch and in the evening.
_TXN_HOURS: Final = (0.06, 0.03, 0.02, 0.02, 0.03, 0.08, 0.3, 0.6, 0.9, 1.0, 1.1, 1.3,
                     1.5, 1.2, 1.0, 1.0, 1.1, 1.3, 1.5, 1.6, 1.6, 1.3, 0.8, 0.3)
_APP_HOURS: Final = (0.1, 0.05, 0.03, 0.02, 0.03, 0.05, 0.3, 0.8, 1.0, 0.9, 0.9, 1.0,
                     1.3, 1.1, 0.9, 0.9, 1.0, 1.1, 1.3, 1.6, 1.9, 1.9, 1.4, 0.6)
_TXN_WEEKDAYS: Final = (1.0, 1.0, 1.0, 1.0, 1.1, 1.25, 1.05)  # Monday..Sunday
_APP_WEEKDAYS: Final = (1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.15)

# Formatting timestamps is a measurable share of the run: look the pieces up instead.
_TWO_DIGITS: Final = tuple(f"{n:02d}" for n in range(60))
_MILLIS: Final = tuple(f".{n:03d}Z" for n in range(1000))
_PAGES: Final = ("home", "accounts", "cards", "transfer", "wealth", "loans", "statements", "offers")
_LEGIT_FAILED_LOGIN_RATE: Final = 0.03
_INITIAL_LEGIT_HISTORY: Final = 0.1  # cases start after this share of the period


@dataclass(frozen=True)
class SimulatorConfig:
    """What to simulate. Every field is validated; the same config always gives the same stream."""

    customers: int = 1000
    days: float = 30
    seed: int = 7
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    fraud_rate: float = 0.03  # share of customers who suffer one injected typology
    legit_feedback_rate: float = 0.05  # share of legit transactions also labelled ``legit``
    feedback_delay_days: tuple[float, float] = (2.0, 10.0)
    app_events: bool = True
    churn_rate: float = 0.02  # share of customers who fade out and leave during the period
    # Chat texts (simulator.voice) after complaints and support chats, and after a few logins:
    # extra events only, the rest of the stream is the same with or without them.
    voice_texts: bool = True

    def __post_init__(self) -> None:
        if self.customers < 0:
            raise ValueError(f"customers must be >= 0, got {self.customers}")
        if not (self.days > 0 and math.isfinite(self.days)):
            raise ValueError(f"days must be a positive finite number, got {self.days}")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        for name in ("fraud_rate", "legit_feedback_rate", "churn_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        low, high = self.feedback_delay_days
        if not 0 <= low <= high:
            raise ValueError(f"feedback_delay_days must be (min, max) with 0 <= min <= max, "
                             f"got {self.feedback_delay_days}")

    @property
    def start_ms(self) -> int:
        """``start`` as whole milliseconds since the Unix epoch."""
        return math.floor(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        """The first millisecond after the simulated period (nothing is emitted at or after it)."""
        return self.start_ms + int(self.days * DAY_MS)


# Kinds of pending items in a customer's heap.
_TXN_TICK: Final = 0  # the customer's next ordinary transaction
_APP_TICK: Final = 1  # the customer's next app session starts
_SALARY: Final = 2
_LOAN: Final = 3
_APP_EVENT: Final = 4  # a planned app event (data: its wire fields)
_SCRIPTED_TXN: Final = 5  # a planned transaction (data: ScriptedTxn)

_Pending = tuple[int, int, int, Any]  # (ts_ms, sequence number, kind, data)


class _CustomerState:
    """The mutable part of one customer: balance, pending items and when activity fades."""

    __slots__ = ("balance", "customer", "fade_from", "gone", "last_product", "pending", "recover",
                 "views")

    def __init__(self, customer: Customer, end_ms: int) -> None:
        self.customer = customer
        self.balance = customer.initial_balance_cents
        self.pending: list[_Pending] = []
        # Ordinary activity is full before ``fade_from``, fades linearly, and stops at ``gone``.
        self.fade_from = end_ms
        self.gone = end_ms
        # A customer who recovers: activity declines from ``fade_from`` towards a floor and is
        # back to full at ``recover`` (``gone`` stays at the end).
        self.recover: int | None = None
        self.last_product = ""  # the last product viewed in the app, a purchase candidate
        # The latest product views (ts_ms, product_id), kept only in a closed loop: what a
        # prompt triggered by a view was about.
        self.views: deque[tuple[int, str]] | None = None

    def activity(self, ts_ms: int) -> float:
        """How active (0..1) the customer's ordinary behaviour is at ``ts_ms``."""
        if ts_ms < self.fade_from:
            return 1.0
        if self.recover is not None:
            if ts_ms >= self.recover:
                return 1.0
            share = (ts_ms - self.fade_from) / (self.recover - self.fade_from)
            return 1.0 - (1.0 - churn.RECOVERY_FLOOR) * share
        if ts_ms >= self.gone:
            return 0.0
        return (self.gone - ts_ms) / (self.gone - self.fade_from)


@dataclass(frozen=True, slots=True)
class _Rhythm:
    """A weekly activity shape: the chance to keep a candidate per hour-of-week, and the peak."""

    keep: tuple[float, ...]  # 168 hour-of-week intensities divided by the peak
    peak: float  # the peak intensity, relative to a mean of 1

    @staticmethod
    def of(hours: tuple[float, ...], weekdays: tuple[float, ...]) -> _Rhythm:
        """Normalise hour and weekday weights to a mean of 1, so rates stay per-day rates."""
        raw = [weekdays[h // 24] * hours[h % 24] for h in range(168)]
        mean = sum(raw) / len(raw)
        peak = max(raw) / mean
        return _Rhythm(tuple(w / mean / peak for w in raw), peak)


_TXN_RHYTHM: Final = _Rhythm.of(_TXN_HOURS, _TXN_WEEKDAYS)
_APP_RHYTHM: Final = _Rhythm.of(_APP_HOURS, _APP_WEEKDAYS)


#: Product views remembered per customer in a closed loop (a prompt is answered long before
#: this many newer views: a customer views a few products a day).
_VIEWS_KEPT: Final = 32


class Simulation:
    """One run of the generator; all of its state lives here (nothing is module-global).

    ``run()`` yields ``(event, truth)`` pairs. With a ``responder``, ``answer(prompt)`` makes
    the customer answer a prompt (see the module docstring); ``answers`` counts the answer
    labels scheduled, ``late_answers`` those moved forward to the current time,
    ``unknown_prompts`` the prompts for customers this simulation does not have.
    """

    def __init__(self, config: SimulatorConfig, with_truth: bool = True,
                 responder: Responder | None = None) -> None:
        self.config = config
        self.with_truth = with_truth  # building truth records costs time nobody may need
        self.responder = responder
        self.now_ms = config.start_ms  # the time of the latest event emitted
        self._inbox: deque[Prompt] = deque()  # prompts handed in, answered before the next event
        self.answers: Counter[str] = Counter()
        self.late_answers = 0
        self.unknown_prompts = 0
        self.rng = random.Random(config.seed)
        self.pools = Pools.for_customers(config.customers)
        self.start_ms = config.start_ms
        self.end_ms = config.end_ms
        self.event_prefix = f"e-{config.seed}-"
        self.events = 0
        self.sessions = 0
        self.sequence = 0
        self.typologies = available_typologies(config.days)
        self.states: list[_CustomerState] = []
        self.due: list[tuple[int, int]] = []  # (ts_ms of the customer's next item, index)
        self.feedback: list[tuple[int, int, Event]] = []  # (ts_ms, sequence, body)
        self.merchant_ids = [merchant_id(n) for n in range(self.pools.merchants)]
        self.merchant_categories = [merchant_category(n) for n in range(self.pools.merchants)]
        self.minute = -1  # the minute whose formatted prefix is cached
        self.minute_prefix = ""
        self.day = -1  # the day whose formatted prefix is cached
        self.day_prefix = ""
        self.delay_ms = tuple(int(d * DAY_MS) for d in config.feedback_delay_days)
        self._ordinary = (self._card_payment, self._transfer_out, self._transfer_in,
                          self._cash_withdrawal, self._cash_deposit, self._securities,
                          self._securities, self._fund_purchase, self._fund_redemption)

    # ----------------------------------------------------------------- the merge loop

    def run(self) -> Iterator[tuple[Event, Truth | None]]:
        """Profiles first (all at ``start``), then every event in time order until the end."""
        for index in range(self.config.customers):
            state = self._new_customer(index)
            if state.pending:  # before the yield: whoever peeks (next_ms) sees every item
                heapq.heappush(self.due, (state.pending[0][0], index))
            yield self._event(self.start_ms, "profile", state.customer.customer_id,
                              profile_fields(state.customer)), None
        yield from self._merge()

    def _merge(self) -> Iterator[tuple[Event, Truth | None]]:
        due, feedback, states, end_ms = self.due, self.feedback, self.states, self.end_ms
        pop, replace, event = heapq.heappop, heapq.heapreplace, self._event
        handlers = (self._txn_tick, self._app_tick, self._salary, self._loan,
                    self._app_event, self._scripted_txn)
        inbox = self._inbox
        voice = self.config.voice_texts and self.config.app_events
        while True:
            if inbox:
                self._answer_inbox()
            if not (due or feedback):
                return
            if feedback and (not due or feedback[0][0] <= due[0][0]):
                ts_ms, _, body = pop(feedback)
                self.now_ms = ts_ms
                customer_id = body.pop("customer_id")
                answer_id = body.pop("event_id", None)  # only answers to prompts name their id
                if answer_id is None:
                    yield event(ts_ms, "feedback", customer_id, body), None
                else:
                    yield self._answer_event(ts_ms, customer_id, answer_id, body), None
                continue
            ts_ms, index = due[0]
            if ts_ms >= end_ms:
                return  # feedback is never scheduled past the end, so nothing is left
            self.now_ms = ts_ms
            state = states[index]
            pending = state.pending
            _, _, kind, data = pop(pending)
            if kind == _APP_EVENT:  # the most common item, handled without a call
                out: tuple[Event, Truth | None] | None = (
                    event(ts_ms, "app", state.customer.customer_id, data), None)
            else:
                out = handlers[kind](state, ts_ms, data)
            if pending:
                replace(due, (pending[0][0], index))
            else:
                pop(due)
            if out is not None:
                yield out
                if voice and kind == _APP_EVENT:
                    text = self._voice(state, out[0])
                    if text is not None:
                        yield text, None

    def _voice(self, state: _CustomerState, trigger: Event) -> Event | None:
        """The chat text that follows ``trigger`` (``simulator.voice``), if one does."""
        action = trigger["action"]
        if action in VOICE_TRIGGERS:  # scripted: a churner's or a wobbling customer's
            kind = "wobble" if state.recover is not None else "churner"
        elif action == "login" and ordinary_text_due(trigger["event_id"]):
            kind = "churner" if state.recover is None and state.gone < self.end_ms else "ordinary"
        else:
            return None
        return voice_event(trigger, self.config.seed, kind)

    # ----------------------------------------------------------------- customers

    def _new_customer(self, index: int) -> _CustomerState:
        """Draw a customer, decide whether they are a victim or a churner, schedule their life."""
        rng = self.rng
        customer = build_customer(rng, index, self.pools, self.config.seed)
        state = _CustomerState(customer, self.end_ms)
        if self.responder is not None:
            state.views = deque(maxlen=_VIEWS_KEPT)
        self.states.append(state)
        case = self._draw_case(customer) if rng.random() < self.config.fraud_rate else None
        if case is not None and case.typology == DORMANT_REACTIVATION:
            silence = int(DORMANT_SILENCE_DAYS * DAY_MS) + rng.randrange(5 * DAY_MS)
            state.fade_from = state.gone = case.start_ms - silence
        elif rng.random() < self.config.churn_rate:
            self._plan_churn(state)
        elif rng.random() < churn.RETAINED_LABEL_RATE:
            span = self.end_ms - self.start_ms
            labelled = self.start_ms + int(span * rng.uniform(0.5, 1.0))
            if rng.random() < churn.RECOVERING_SHARE:
                labelled = self._plan_recovery(state)
            if labelled < self.end_ms:
                self._push_feedback(labelled, {"customer_id": customer.customer_id,
                                               "label": "retained"})
        if case is not None:
            self._push_steps(state, plan_case(rng, customer, case, self.end_ms, self._new_session))
        self._schedule(state, self._next_time(state, self.start_ms, customer.txn_rate, _TXN_RHYTHM),
                       _TXN_TICK)
        if customer.app_rate > 0 and self.config.app_events:
            self._schedule(state, self._next_time(state, self.start_ms, customer.app_rate,
                                                  _APP_RHYTHM), _APP_TICK)
        if customer.salary_cents:
            self._schedule(state, self._next_monthly(self.start_ms, customer.salary_day), _SALARY)
        if customer.loan_cents:
            self._schedule(state, self._next_monthly(self.start_ms, customer.loan_day), _LOAN)
        return state

    def _draw_case(self, customer: Customer) -> Case:
        rng = self.rng
        typology = rng.choice(self.typologies)
        span = self.end_ms - self.start_ms
        if typology == DORMANT_REACTIVATION:
            # A few days of ordinary history, then the silence, then the takeover.
            silence = DORMANT_SILENCE_DAYS * DAY_MS + 5 * DAY_MS
            low = self.start_ms + 3 * DAY_MS + silence
            high = self.end_ms - DAY_MS
        else:
            # Leave room for the whole script and its feedback before the end when the period
            # allows, and some ordinary history before it so detectors have a baseline.
            low = self.start_ms + int(span * _INITIAL_LEGIT_HISTORY)
            high = self.end_ms - 4 * DAY_MS - self.delay_ms[1]
            if high <= low:
                high = self.start_ms + int(span * 0.75)
        start = low + rng.randrange(max(1, int(high - low)))
        return Case(typology, f"case-{self.config.seed}-{customer.index:06d}", int(start))

    def _plan_churn(self, state: _CustomerState) -> None:
        rng, span = self.rng, self.end_ms - self.start_ms
        fade_from = self.start_ms + int(span * rng.uniform(0.05, 0.4))
        # Short runs get shorter fades, so the churn and its label still fit in the period.
        gone = fade_from + min(int(rng.uniform(*churn.FADE_DAYS) * DAY_MS), int(0.45 * span))
        state.fade_from, state.gone = fade_from, gone
        self._push_steps(state, churn.plan_churn(rng, state.customer, fade_from, gone,
                                                 self.end_ms, self._new_session,
                                                 self.pools.payees))
        labelled = gone + int(rng.uniform(*churn.LABEL_DELAY_DAYS) * DAY_MS)
        if labelled < self.end_ms:
            self._push_feedback(labelled, {"customer_id": state.customer.customer_id,
                                           "label": "churned"})

    def _plan_recovery(self, state: _CustomerState) -> int:
        """A customer who starts to fade and comes back; returns when ``retained`` is known."""
        rng, span = self.rng, self.end_ms - self.start_ms
        fade_from = self.start_ms + int(span * rng.uniform(0.1, 0.5))
        recover = fade_from + int(rng.uniform(*churn.RECOVERY_DAYS) * DAY_MS)
        state.fade_from, state.recover = fade_from, recover
        self._push_steps(state, churn.plan_wobble(rng, state.customer, fade_from, recover,
                                                  self.end_ms, self._new_session))
        return recover + int(rng.uniform(*churn.LABEL_DELAY_DAYS) * DAY_MS)

    def _push_steps(self, state: _CustomerState, steps: list[Step]) -> None:
        if not self.config.app_events:
            steps = [step for step in steps if isinstance(step[1], ScriptedTxn)]
        for ts_ms, step in steps:
            if isinstance(step, ScriptedTxn):
                self._schedule(state, ts_ms, _SCRIPTED_TXN, step)
            else:
                self._schedule(state, ts_ms, _APP_EVENT, step.fields)

    def _schedule(self, state: _CustomerState, ts_ms: int | None, kind: int,
                  data: Any = None) -> None:
        if ts_ms is not None and ts_ms < self.end_ms:
            self.sequence += 1
            heapq.heappush(state.pending, (ts_ms, self.sequence, kind, data))

    def _new_session(self) -> str:
        self.sessions += 1
        return f"s-{self.config.seed}-{self.sessions}"

    # ----------------------------------------------------------------- time

    def _next_time(self, state: _CustomerState, after_ms: int, rate_per_day: float,
                   rhythm: _Rhythm) -> int | None:
        """The next event time of a Poisson process shaped by ``rhythm`` and the customer's fade.

        Thinning: candidates arrive at the peak rate and are kept with probability
        intensity / peak, which gives the non-homogeneous process exactly.
        """
        mean_gap_ms = DAY_MS / (rate_per_day * rhythm.peak)
        keep, random, log = rhythm.keep, self.rng.random, math.log
        gone, fade_from = state.gone, state.fade_from
        t = after_ms
        while True:
            t += int(-log(1.0 - random()) * mean_gap_ms) + 1
            if t >= gone:
                return None
            chance = keep[(t // HOUR_MS + _EPOCH_HOUR_OF_WEEK) % 168]
            if t > fade_from:
                chance *= state.activity(t)
            if random() < chance:
                return t

    def _next_monthly(self, after_ms: int, day: int) -> int:
        """The first ``day`` of a month after ``after_ms``, 09:00-11:00 local time."""
        now = datetime.fromtimestamp(after_ms / 1000, UTC) + timedelta(hours=8)
        year, month = now.year, now.month
        if now.day >= day:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        local = datetime(year, month, day, 9, tzinfo=UTC) - timedelta(hours=8)
        return int(local.timestamp() * 1000) + self.rng.randrange(2 * HOUR_MS)

    def _ts(self, ts_ms: int) -> str:
        """RFC 3339 UTC with milliseconds, e.g. ``2026-01-05T09:30:00.125Z``."""
        minute, ms = divmod(ts_ms, 60_000)
        if minute != self.minute:
            # Events arrive in time order, several per minute: format each minute once,
            # and each day once (strftime is slow).
            day, minute_of_day = divmod(minute, 1440)
            if day != self.day:
                self.day = day
                self.day_prefix = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%dT")
            hour, minute_of_hour = divmod(minute_of_day, 60)
            self.minute = minute
            self.minute_prefix = f"{self.day_prefix}{_TWO_DIGITS[hour]}:{_TWO_DIGITS[minute_of_hour]}:"
        seconds, ms = divmod(ms, SECOND_MS)
        return f"{self.minute_prefix}{_TWO_DIGITS[seconds]}{_MILLIS[ms]}"

    # ----------------------------------------------------------------- emission

    def _event(self, ts_ms: int, kind: str, customer_id: str, body: dict[str, Any]) -> Event:
        """A wire event: the common fields first, then ``body``; ids count up in emission order."""
        self.events += 1
        minute, ms = divmod(ts_ms, 60_000)
        if minute == self.minute:  # the common case of _ts, inlined: it runs for every event
            seconds, ms = divmod(ms, SECOND_MS)
            ts = f"{self.minute_prefix}{_TWO_DIGITS[seconds]}{_MILLIS[ms]}"
        else:
            ts = self._ts(ts_ms)
        event = {"kind": kind, "event_id": f"{self.event_prefix}{self.events}", "ts": ts,
                 "customer_id": customer_id}
        event.update(body)
        return event

    def _transaction(self, state: _CustomerState, ts_ms: int, cents: int, fields: dict[str, Any],
                     typology: str | None = None,
                     case_id: str | None = None) -> tuple[Event, Truth | None]:
        """Settle the amount on the balance, emit the transaction, schedule its feedback."""
        if fields["direction"] == "debit":
            state.balance -= cents
        else:
            state.balance += cents
        customer_id = state.customer.customer_id
        event = self._event(ts_ms, "transaction", customer_id, fields)
        event["amount"] = cents / 100
        event["currency"] = "CNY"
        event["balance_after"] = state.balance / 100
        event_id = event["event_id"]
        if typology is not None:
            self._push_label(ts_ms, customer_id, event_id, "fraud")
        elif self.rng.random() < self.config.legit_feedback_rate:
            self._push_label(ts_ms, customer_id, event_id, "legit")
        if not self.with_truth:
            return event, None
        return event, {"event_id": event_id, "customer_id": customer_id, "ts": event["ts"],
                       "is_fraud": typology is not None, "typology": typology, "case_id": case_id}

    def _push_label(self, ts_ms: int, customer_id: str, event_id: str, label: str) -> None:
        low, high = self.delay_ms
        labelled = ts_ms + low + self.rng.randrange(high - low + 1)
        if labelled < self.end_ms:  # labels due after the end have not arrived yet
            self._push_feedback(labelled, {"customer_id": customer_id, "label": label,
                                           "ref_event_id": event_id})

    def _push_feedback(self, ts_ms: int, body: Event) -> None:
        self.sequence += 1
        heapq.heappush(self.feedback, (ts_ms, self.sequence, body))

    # ----------------------------------------------------------------- the closed loop

    def answer(self, prompt: Prompt) -> None:
        """Have the customer answer ``prompt``: the answers are scheduled before the next event
        is emitted. Safe to call from any thread (a deque's append is atomic)."""
        if self.responder is None:
            raise RuntimeError("this simulation has no responder: it answers no prompt")
        self._inbox.append(prompt)

    def next_ms(self) -> int | None:
        """When the next event can come at the earliest (None: the run is over). A lower
        bound: the item due then may emit nothing (a skipped salary, a session being planned).
        A closed loop that hands in its prompts before the simulation passes their answers'
        times has every answer come out at its own time."""
        if len(self.states) < self.config.customers:
            return self.start_ms  # profiles still to come
        times = [self.now_ms] if self._inbox else []
        if self.due and self.due[0][0] < self.end_ms:
            times.append(self.due[0][0])
        if self.feedback:
            times.append(self.feedback[0][0])
        return min(times) if times else None

    def customer_state(self, customer_id: str) -> _CustomerState | None:
        """The simulated customer ``customer_id`` (``c`` and their index), if drawn yet."""
        if customer_id[:1] != "c" or not customer_id[1:].isdigit():
            return None
        index = int(customer_id[1:])
        if index >= len(self.states) or self.states[index].customer.customer_id != customer_id:
            return None
        return self.states[index]

    def viewed_category(self, prompt: Prompt) -> str | None:
        """The category of the product whose view triggered ``prompt``, if one did."""
        state = self.customer_state(prompt.customer_id)
        if prompt.trigger != "product_view" or state is None or state.views is None:
            return None
        t_ms = round(parse_timestamp(prompt.event_ts) * 1000)
        for ts_ms, product in reversed(state.views):
            if ts_ms == t_ms:
                return PRODUCT_CATEGORY.get(product)
        return None

    def response(self, prompt: Prompt) -> Response | None:
        """What the customer will answer to ``prompt`` (None: not a customer of this
        simulation); deterministic, and changes nothing."""
        state = self.customer_state(prompt.customer_id)
        if state is None or self.responder is None:
            return None
        return self.responder.respond(prompt, state.customer, self.viewed_category(prompt))

    def _answer_inbox(self) -> None:
        inbox, prefix = self._inbox, self.event_prefix
        while inbox:
            prompt = inbox.popleft()
            response = self.response(prompt)
            if response is None:
                self.unknown_prompts += 1
                continue
            for number, answer in enumerate(response.answers):
                ts_ms = answer.t_ms
                if ts_ms < self.now_ms:
                    self.late_answers += 1
                    ts_ms = self.now_ms
                if ts_ms >= self.end_ms:
                    continue  # the run is over before the customer answers
                self.answers[answer.label] += 1
                self._push_feedback(ts_ms, {"customer_id": prompt.customer_id,
                                            "event_id": f"{prefix}{prompt.prompt_id}-{number}",
                                            "label": answer.label, "ref_prompt_id": prompt.prompt_id})

    def _answer_event(self, ts_ms: int, customer_id: str, event_id: str, body: Event) -> Event:
        """A feedback event answering a prompt; its id is its own, not the next number."""
        event = {"kind": "feedback", "event_id": event_id, "ts": self._ts(ts_ms), "customer_id": customer_id}
        event.update(body)
        return event

    # ----------------------------------------------------------------- pending-item handlers

    def _txn_tick(self, state: _CustomerState, ts_ms: int,
                  _: Any) -> tuple[Event, Truth | None] | None:
        """An ordinary transaction of the customer's usual mix, then the next one is scheduled."""
        customer = state.customer
        self._schedule(state, self._next_time(state, ts_ms, customer.txn_rate, _TXN_RHYTHM),
                       _TXN_TICK)
        r = self.rng.random()
        kind = 0
        while customer.mix[kind] < r:
            kind += 1
        cents, fields = self._ordinary[kind](customer, state, ts_ms, TXN_TYPES[kind])
        if fields["direction"] == "debit" and cents > state.balance:
            cents, fields = self._top_up(customer, cents)
        return self._transaction(state, ts_ms, cents, fields)

    def _salary(self, state: _CustomerState, ts_ms: int, _: Any) -> tuple[Event, Truth | None] | None:
        customer = state.customer
        if state.activity(ts_ms) <= 0.5:
            return None  # a leaving customer has the salary paid elsewhere
        self._schedule(state, self._next_monthly(ts_ms, customer.salary_day), _SALARY)
        cents = int(customer.salary_cents * self.rng.uniform(0.98, 1.02))
        return self._transaction(state, ts_ms, cents, {
            "txn_type": "salary", "direction": "credit", "channel": "api",
            "account_id": customer.account_id, "counterparty_id": employer_id(customer.employer),
            "counterparty_country": HOME_COUNTRY})

    def _loan(self, state: _CustomerState, ts_ms: int, _: Any) -> tuple[Event, Truth | None] | None:
        customer = state.customer
        if state.activity(ts_ms) <= 0.0:
            return None
        self._schedule(state, self._next_monthly(ts_ms, customer.loan_day), _LOAN)
        if state.balance < customer.loan_cents:
            return None  # a missed repayment leaves no transaction
        return self._transaction(state, ts_ms, customer.loan_cents, {
            "txn_type": "loan_repayment", "direction": "debit", "channel": "api",
            "account_id": customer.account_id})

    def _scripted_txn(self, state: _CustomerState, ts_ms: int,
                      step: ScriptedTxn) -> tuple[Event, Truth | None] | None:
        cents = int(state.balance * step.drain) if step.drain > 0 else step.cents
        if step.fields["direction"] == "debit":
            cents = min(cents, state.balance)
            if cents <= 0:
                return None  # nothing left to take
        return self._transaction(state, ts_ms, cents, step.fields, step.typology, step.case_id)

    def _app_event(self, state: _CustomerState, ts_ms: int,
                   fields: dict[str, Any]) -> tuple[Event, None]:
        return self._event(ts_ms, "app", state.customer.customer_id, fields), None

    def _app_tick(self, state: _CustomerState, ts_ms: int, _: Any) -> None:
        """Plan one app session (its events are emitted as they fall due); schedule the next."""
        customer, rng = state.customer, self.rng
        self._schedule(state, self._next_time(state, ts_ms, customer.app_rate, _APP_RHYTHM),
                       _APP_TICK)
        where = {"session_id": self._new_session(), "device_id": self._device(customer),
                 "channel": customer.app_channel}
        t = ts_ms
        if rng.random() < _LEGIT_FAILED_LOGIN_RATE:
            self._schedule(state, t, _APP_EVENT, {"action": "login_failed",
                                                  "device_id": where["device_id"],
                                                  "channel": customer.app_channel,
                                                  "ip_country": HOME_COUNTRY})
            t += self._between(10 * SECOND_MS, 60 * SECOND_MS)
        self._schedule(state, t, _APP_EVENT, {"action": "login", **where,
                                              "ip_country": self._ip_country(customer)})
        views = state.views
        for _ in range(self._between(1, 6)):
            t += self._between(2 * SECOND_MS, 90 * SECOND_MS)
            action = self._app_action(state)
            self._schedule(state, t, _APP_EVENT, {**action, **where})
            if views is not None and action["action"] == "product_view":
                views.append((t, action["product_id"]))
        if rng.random() < 0.7:
            t += self._between(2 * SECOND_MS, 60 * SECOND_MS)
            self._schedule(state, t, _APP_EVENT, {"action": "logout", **where})

    def _app_action(self, state: _CustomerState) -> dict[str, Any]:
        """One in-session action: mostly page and product views, some searches."""
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            return {"action": "page_view", "properties": {"page": rng.choice(_PAGES)},
                    "duration_ms": self._between(1_000, 60_000)}
        if r < 0.82:
            product = (FUND_PRODUCTS[int(len(FUND_PRODUCTS) * rng.random() ** 2)]
                       if rng.random() < 0.6 else rng.choice(WEALTH_PRODUCTS))
            if product[0] == "f":
                state.last_product = product
            return {"action": "product_view", "product_id": product,
                    "duration_ms": self._between(2_000, 120_000)}
        if r < 0.97:
            return {"action": "search", "properties": {"query": rng.choice(MERCHANT_CATEGORIES)}}
        return {"action": "transfer_out_view"}  # ordinary customers look at it too, now and then

    def _between(self, low: int, high: int) -> int:
        """Uniform integer in [low, high]; cheaper than ``Random.randint`` on the hot path."""
        return low + int(self.rng.random() * (high - low + 1))

    def _lognormal(self, mu: float, sigma: float) -> float:
        return math.exp(self.rng.gauss(mu, sigma))

    def _device(self, customer: Customer) -> str:
        devices = customer.devices
        return devices[0] if len(devices) == 1 or self.rng.random() < 0.8 else devices[1]

    def _ip_country(self, customer: Customer) -> str:
        if customer.travel_countries and self.rng.random() < 0.02:
            return self.rng.choice(customer.travel_countries)
        return HOME_COUNTRY

    # ----------------------------------------------------------------- ordinary transactions
    # Each returns (cents, wire fields without amount/balance); the caller settles the balance.

    def _card_payment(self, customer: Customer, state: _CustomerState, ts_ms: int,
                      _: str) -> tuple[int, dict[str, Any]]:
        rng = self.rng
        country = HOME_COUNTRY
        r = rng.random()
        if customer.travel_countries and r < 0.02:
            country = rng.choice(customer.travel_countries)
            merchant = foreign_merchant(country, rng.randrange(foreign_merchant_count()))
            category = "travel" if r < 0.01 else "restaurant"
        else:
            number = (customer.merchants[int(rng.random() * len(customer.merchants))]
                      if r < 0.85 else int(self.pools.merchants * rng.random() ** 2))
            merchant, category = self.merchant_ids[number], self.merchant_categories[number]
        cents = max(100, int(customer.typical_cents * self._lognormal(0.0, 0.7)))
        fields = {"txn_type": "card_payment", "direction": "debit", "channel": "pos",
                  "account_id": customer.account_id, "counterparty_id": merchant,
                  "counterparty_country": country, "merchant_category": category}
        if customer.app_rate > 0 and rng.random() < 0.3:
            fields["channel"] = "app"  # mobile wallet / QR payment
            fields["device_id"] = self._device(customer)
        return cents, fields

    def _online(self, customer: Customer, fields: dict[str, Any]) -> dict[str, Any]:
        """Route a self-service transaction to app/web (with device) or, without app, the branch."""
        if customer.app_rate > 0 or self.rng.random() < 0.5:
            fields["channel"] = customer.app_channel if customer.app_rate > 0 else "web"
            fields["device_id"] = self._device(customer)
        else:
            fields["channel"] = "branch"
        return fields

    def _payee(self, customer: Customer) -> str:
        rng = self.rng
        if rng.random() < 0.85:
            return payee_id(customer.payees[int(rng.random() * len(customer.payees))])
        return payee_id(rng.randrange(self.pools.payees))

    def _transfer_out(self, customer: Customer, state: _CustomerState, ts_ms: int,
                      _: str) -> tuple[int, dict[str, Any]]:
        cents = _round_to(int(customer.typical_cents * 3 * self._lognormal(0.0, 1.0)),
                          1000)
        return max(100, cents), self._online(customer, {
            "txn_type": "transfer", "direction": "debit", "account_id": customer.account_id,
            "counterparty_id": self._payee(customer), "counterparty_country": HOME_COUNTRY})

    def _transfer_in(self, customer: Customer, state: _CustomerState, ts_ms: int,
                     _: str) -> tuple[int, dict[str, Any]]:
        cents = _round_to(int(customer.typical_cents * 3 * self._lognormal(0.0, 1.0)),
                          1000)
        return max(100, cents), {
            "txn_type": "transfer", "direction": "credit", "channel": "api",
            "account_id": customer.account_id, "counterparty_id": self._payee(customer),
            "counterparty_country": HOME_COUNTRY}

    def _top_up(self, customer: Customer, wanted_cents: int) -> tuple[int, dict[str, Any]]:
        # An account that cannot cover a payment gets money moved in from elsewhere instead,
        # which keeps balances positive without a separate income model.
        cents = _round_to(max(2 * wanted_cents, 20 * customer.typical_cents), 100_00)
        return cents, {"txn_type": "transfer", "direction": "credit", "channel": "api",
                       "account_id": customer.account_id,
                       "counterparty_id": payee_id(customer.payees[0]),
                       "counterparty_country": HOME_COUNTRY}

    def _cash(self, customer: Customer, ts_ms: int, txn_type: str, direction: str,
              cents: int, branch_share: float) -> tuple[int, dict[str, Any]]:
        fields: dict[str, Any] = {"txn_type": txn_type, "direction": direction,
                                  "account_id": customer.account_id}
        if 9 <= local_hour(ts_ms) < 17 and self.rng.random() < branch_share:
            fields["channel"] = "branch"
        else:
            fields["channel"] = "atm"
            fields["counterparty_id"] = atm_id(customer.atms[0] if len(customer.atms) == 1
                                               or self.rng.random() < 0.7 else customer.atms[1])
            cents = min(cents, 20_000_00)  # ATM limit
        return max(100_00, _round_to(cents, 100_00)), fields

    def _cash_withdrawal(self, customer: Customer, state: _CustomerState, ts_ms: int,
                         _: str) -> tuple[int, dict[str, Any]]:
        cents = int(customer.typical_cents * self._lognormal(0.7, 0.6))
        return self._cash(customer, ts_ms, "cash_withdrawal", "debit", cents, 0.1)

    def _cash_deposit(self, customer: Customer, state: _CustomerState, ts_ms: int,
                      _: str) -> tuple[int, dict[str, Any]]:
        cents = int(customer.typical_cents * self._lognormal(1.6, 0.9))
        return self._cash(customer, ts_ms, "cash_deposit", "credit", cents, 0.5)

    def _securities(self, customer: Customer, state: _CustomerState, ts_ms: int,
                    txn_type: str) -> tuple[int, dict[str, Any]]:
        local_day, local_ms = divmod(ts_ms + LOCAL_UTC_OFFSET_MS, DAY_MS)
        minute_of_day = local_ms // 60_000
        weekday = (local_day + 3) % 7  # the epoch was a Thursday; 0 = Monday
        if weekday >= 5 or not 9 * 60 + 30 <= minute_of_day < 15 * 60:
            return self._card_payment(customer, state, ts_ms, "card_payment")  # market closed
        rng = self.rng
        cents = _round_to(int(customer.typical_cents * 10 * self._lognormal(0.0, 0.8)), 100)
        return max(100_00, cents), self._online(customer, {
            "txn_type": txn_type, "direction": "debit" if txn_type == "securities_buy" else "credit",
            "account_id": customer.account_id,
            "product_id": STOCK_PRODUCTS[int(len(STOCK_PRODUCTS) * rng.random() ** 2)]})

    def _fund_purchase(self, customer: Customer, state: _CustomerState, ts_ms: int,
                       _: str) -> tuple[int, dict[str, Any]]:
        rng = self.rng
        product = state.last_product
        if not product or rng.random() < 0.5:
            product = FUND_PRODUCTS[int(len(FUND_PRODUCTS) * rng.random() ** 2)]
        cents = _round_to(int(customer.typical_cents * 15 * self._lognormal(0.0, 0.7)), 1000_00)
        return max(1000_00, cents), self._online(customer, {
            "txn_type": "fund_purchase", "direction": "debit", "account_id": customer.account_id,
            "product_id": product})

    def _fund_redemption(self, customer: Customer, state: _CustomerState, ts_ms: int,
                         _: str) -> tuple[int, dict[str, Any]]:
        rng = self.rng
        cents = _round_to(int(customer.typical_cents * 12 * self._lognormal(0.0, 0.7)), 100_00)
        return max(100_00, cents), self._online(customer, {
            "txn_type": "fund_redemption", "direction": "credit",
            "account_id": customer.account_id,
            "product_id": FUND_PRODUCTS[int(len(FUND_PRODUCTS) * rng.random() ** 2)]})


def _round_to(cents: int, unit: int) -> int:
    return (cents + unit // 2) // unit * unit


def generate_with_truth(config: SimulatorConfig) -> Iterator[tuple[Event, Truth | None]]:
    """Yield ``(event, truth)`` in non-decreasing ``ts`` order; ``truth`` only for transactions.

    ``truth`` is ``{"event_id", "customer_id", "ts", "is_fraud", "typology", "case_id"}``.
    Lazy: customers are drawn as their profile events are reached and every other event just
    before it is yielded.
    """
    return Simulation(config).run()


def generate(config: SimulatorConfig) -> Iterator[Event]:
    """Yield the wire events of CONTRACT.md section 1 in non-decreasing ``ts`` order.

    The same events as ``generate_with_truth(config)``, without building the truth records.
    """
    for event, _ in Simulation(config, with_truth=False).run():
        yield event


class _JsonlWriter:
    """Appends JSON lines to a file (gzip for ``.gz``), in batches: a write per line is slow."""

    _BATCH: Final = 4096

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self._raw = path.open("wb")
        self._out: BufferedIOBase = self._raw
        if path.suffix == ".gz":
            # mtime=0 and no file name in the header keep the compressed bytes reproducible;
            # level 6 is gzip's own default and several times faster than Python's 9.
            self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0,
                                      compresslevel=6)
        self._lines: list[bytes] = []

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record; it is written with the next batch."""
        self._lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        if len(self._lines) >= self._BATCH:
            self._flush()

    def _flush(self) -> None:
        self._out.write(b"".join(self._lines))
        self._lines.clear()

    def close(self) -> None:
        """Write what is queued and close the file (and its gzip layer)."""
        try:
            self._flush()
            self._out.close()  # GzipFile does not close the file object it was given
        finally:
            self._raw.close()


def write_jsonl(config: SimulatorConfig, out_path: str | Path,
                truth_path: str | Path | None = None) -> dict[str, Any]:
    """Write the events (and, with ``truth_path``, the truth) as JSONL; ``.gz`` means gzip.

    Returns counts: ``events``, ``by_kind``, ``by_label`` (feedback), ``fraud_transactions``
    per typology and ``cases`` per typology.
    """
    by_kind: Counter[str] = Counter()
    by_label: Counter[str] = Counter()
    fraud: Counter[str] = Counter()
    cases: dict[str, set[str]] = {}
    events_file = _JsonlWriter(out_path)
    truth_file = _JsonlWriter(truth_path) if truth_path is not None else None
    try:
        for event, truth in generate_with_truth(config):
            kind = event["kind"]
            by_kind[kind] += 1
            if kind == "feedback":
                by_label[event["label"]] += 1
            events_file.append(event)
            if truth is not None:
                if truth["is_fraud"]:
                    fraud[truth["typology"]] += 1
                    cases.setdefault(truth["typology"], set()).add(truth["case_id"])
                if truth_file is not None:
                    truth_file.append(truth)
    finally:
        events_file.close()
        if truth_file is not None:
            truth_file.close()
    return {"events": sum(by_kind.values()), "by_kind": dict(sorted(by_kind.items())),
            "by_label": dict(sorted(by_label.items())),
            "fraud_transactions": dict(sorted(fraud.items())),
            "cases": {name: len(ids) for name, ids in sorted(cases.items())}}
