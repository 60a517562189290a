"""Fair recommendations: exposure, acceptance and conversion of next-best-action prompts per
customer group, the disparity check, and the constraint that corrects an under-served group.

A customer belongs to one group per dimension of :data:`DIMENSIONS`: their ``segment``, their
``age_band`` (from ``birth_year`` and the event's year), ``city_tier`` and ``gender``, as the
latest profile gives them. Values are bounded: one outside the configured ones is ``other``,
a missing one ``unknown`` (tracked, never judged), so that a metric label can never carry an
identifier or grow without bound.

Per group, in tumbling windows of ``window_days`` of **event time** (so a replay counts what
live processing counted), :class:`FairnessTracker` counts

- ``eligible``: customers seen at a trigger moment (once per window; a customer who opted out
  of marketing is nobody's to prompt and is not counted);
- ``prompted``: prompts made to them;
- ``accepted``: prompts the RM accepted (a conversion without an acceptance counts too);
- ``converted``: prompts that converted.

Exposure is prompts per eligible customer, acceptance and conversion are per prompt. When the
event time crosses the end of a window, :func:`disparities` judges it: in each dimension, each
group's rate over the best-served group's (``ratio``), a group with fewer than
``min_customers`` eligible customers (``min_prompts`` prompts for acceptance and conversion)
being neither judged nor the reference; a ratio under ``threshold`` (the four-fifths rule,
0.8) is a breach, and the engine raises a ``fairness_drift`` alert.

The constraint (off unless ``floor`` > 0) adds a boost to the prompt scores of an under-served
group's customers, so that a score gate (``NBAParams.min_score``) lets more of their prompts
through. The boost is an integral controller per group, updated at each window's check:
``boost <- clip(boost + gain * (floor - ratio), 0, boost_max)``, ``ratio`` the group's
exposure ratio over the window just closed and ``boost_max`` the configured ``boost``. It
settles where the group's exposure ratio is ``floor`` on average (set it a little above the
``threshold``), and is 0 for a group that never falls under it. A customer gets the largest
boost of their groups. (It replaced a rule that added ``boost`` for the window after one
judged under ``floor`` and nothing otherwise: the group then swung above and under the floor,
window after window.)

>>> p = FairnessParams(min_customers=2, min_prompts=2)
>>> tracker = FairnessTracker(p)
>>> t0 = 1767225600.0  # 2026-01-01
>>> a = groups_of("mass", 1990, "female", "1", t0, p)
>>> b = groups_of("private", 1950, "male", "3", t0, p)
>>> a, b
(('mass', '30-44', 'female', '1'), ('private', '60+', 'male', '3'))
>>> tracker.advance(t0)
>>> for _ in range(4):
...     tracker.eligible(a); tracker.prompted(a); tracker.eligible(b)
>>> tracker.prompted(b)
>>> tracker.advance(t0 + 7 * 86400.0)
>>> [(d.dimension, d.value, round(d.ratio, 2)) for d in tracker.last.breaches]
[('segment', 'private', 0.25), ('age_band', '60+', 0.25), ('gender', 'male', 0.25), ('city_tier', '3', 0.25)]

The constraint, on a group whose exposure stays at a quarter of the best-served group's:

>>> tracker = FairnessTracker(FairnessParams(min_customers=2, min_prompts=2, floor=0.85, boost=0.3, gain=0.2))
>>> tracker.advance(t0)
>>> for week in range(1, 4):
...     for _ in range(4):
...         tracker.eligible(a); tracker.prompted(a); tracker.eligible(b)
...     tracker.prompted(b)
...     tracker.advance(t0 + week * 7 * 86400.0)
...     print(round(tracker.boost(b), 2), tracker.boost(a))
0.12 0.0
0.24 0.0
0.3 0.0
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from schemas.snapshots import restore_fields

DIMENSIONS: Final = ("segment", "age_band", "gender", "city_tier")
METRICS: Final = ("exposure", "acceptance", "conversion")
OUTCOMES: Final = ("eligible", "prompted", "accepted", "converted")
UNKNOWN: Final = "unknown"
OTHER: Final = "other"
DAY: Final = 86400.0

Groups = tuple[str, ...]  # one value per dimension of DIMENSIONS


@dataclass(frozen=True, slots=True)
class FairnessParams:
    """What is tracked and judged, and the constraint (``[nba.fairness]`` in the config)."""

    enabled: bool = True  # track and check (the constraint needs it)
    threshold: float = 0.8  # a ratio to the best-served group under this is a breach
    window_days: float = 7.0  # tumbling windows of event time; each is judged as it closes
    min_customers: int = 30  # eligible customers a group needs in a window to be judged on exposure
    min_prompts: int = 20  # prompts a group needs in a window to be judged on acceptance, conversion
    segments: tuple[str, ...] = ("mass", "affluent", "private")
    genders: tuple[str, ...] = ("female", "male")
    city_tiers: tuple[str, ...] = ("1", "2", "3", "4")
    age_edges: tuple[int, ...] = (30, 45, 60)  # age bands: <30, 30-44, 45-59, 60+
    floor: float = 0.0  # constraint: 0 = off; else the exposure ratio it holds each group at (on average)
    boost: float = 0.2  # the most it adds to the prompt score of a customer of an under-served group
    gain: float = 0.2  # boost added per unit of a group's exposure ratio under the floor, at each check

    __setstate__ = restore_fields

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("fairness.threshold must be in (0, 1]")
        if self.window_days <= 0:
            raise ValueError("fairness.window_days must be positive")
        if self.min_customers < 1 or self.min_prompts < 1:
            raise ValueError("fairness.min_customers and min_prompts must be at least 1")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError("fairness.floor must be in [0, 1] (0: no constraint)")
        if self.boost < 0:
            raise ValueError("fairness.boost must not be negative")
        if self.gain <= 0:
            raise ValueError("fairness.gain must be positive")
        if list(self.age_edges) != sorted(set(self.age_edges)):
            raise ValueError("fairness.age_edges must be increasing")

    def values(self, dimension: str) -> tuple[str, ...]:
        """Every value a group of ``dimension`` can take (the metrics' label values)."""
        if dimension == "age_band":
            return (*age_bands(self.age_edges), UNKNOWN)
        known = {"segment": self.segments, "gender": self.genders, "city_tier": self.city_tiers}[dimension]
        return (*known, OTHER, UNKNOWN)


def age_bands(edges: Sequence[int]) -> tuple[str, ...]:
    """The names of the age bands ``edges`` cut.

    >>> age_bands((30, 45, 60))
    ('<30', '30-44', '45-59', '60+')
    """
    if not edges:
        return ("all",)
    inner = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    return (f"<{edges[0]}", *inner, f"{edges[-1]}+")


def _bounded(value: str | None, known: tuple[str, ...]) -> str:
    if value is None or value == "":
        return UNKNOWN
    return value if value in known else OTHER


def groups_of(segment: str | None, birth_year: int | None, gender: str | None, city_tier: str | None,
              t: float, params: FairnessParams) -> Groups:
    """The customer's group in each dimension of :data:`DIMENSIONS` at event time ``t``."""
    if birth_year is None:
        band = UNKNOWN
    else:
        age, bands = time.gmtime(t).tm_year - birth_year, age_bands(params.age_edges)
        band = bands[sum(age >= edge for edge in params.age_edges)]
    return (_bounded(segment, params.segments), band, _bounded(gender, params.genders),
            _bounded(city_tier, params.city_tiers))


@dataclass(frozen=True, slots=True)
class GroupFigures:
    """One group's counts over a window."""

    dimension: str
    value: str
    eligible: int
    prompted: int
    accepted: int
    converted: int

    __setstate__ = restore_fields

    def rate(self, metric: str) -> float:
        """Exposure (prompts per eligible customer), acceptance or conversion (per prompt)."""
        if metric == "exposure":
            return self.prompted / self.eligible if self.eligible else 0.0
        if metric == "acceptance":
            return self.accepted / self.prompted if self.prompted else 0.0
        return self.converted / self.prompted if self.prompted else 0.0

    def judged(self, metric: str, params: FairnessParams) -> bool:
        """Whether the group has enough counts to be judged on ``metric``."""
        if self.value == UNKNOWN:
            return False
        if metric == "exposure":
            return self.eligible >= params.min_customers
        return self.prompted >= params.min_prompts


@dataclass(frozen=True, slots=True)
class Disparity:
    """A group's rate of ``metric`` over the best-served group's of its dimension."""

    dimension: str
    value: str
    metric: str
    rate: float
    best: float
    ratio: float
    breached: bool

    __setstate__ = restore_fields


def disparities(groups: Iterable[GroupFigures], params: FairnessParams) -> tuple[Disparity, ...]:
    """Every judged group's ratio to the best-served judged group of its dimension, per metric
    (a dimension with fewer than two judged groups, or a best rate of 0, is not judged).

    >>> p = FairnessParams(min_customers=10, min_prompts=5)
    >>> figures = [GroupFigures("gender", "female", 100, 50, 10, 5), GroupFigures("gender", "male", 100, 35, 7, 4),
    ...            GroupFigures("gender", "other", 3, 0, 0, 0)]
    >>> [(d.metric, d.value, round(d.ratio, 2), d.breached) for d in disparities(figures, p)]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('exposure', 'female', 1.0, False), ('exposure', 'male', 0.7, True), ('acceptance', 'female', 1.0, False),
     ('acceptance', 'male', 1.0, False), ('conversion', 'female', 0.88, False), ('conversion', 'male', 1.0, False)]
    """
    by_dimension: dict[str, list[GroupFigures]] = {}
    for figures in groups:
        by_dimension.setdefault(figures.dimension, []).append(figures)
    out: list[Disparity] = []
    for dimension in DIMENSIONS:
        members = by_dimension.get(dimension, [])
        for metric in METRICS:
            judged = [(g, g.rate(metric)) for g in members if g.judged(metric, params)]
            if len(judged) < 2:
                continue
            best = max(rate for _, rate in judged)
            if best <= 0.0:
                continue
            for g, rate in judged:
                ratio = rate / best
                out.append(Disparity(dimension, g.value, metric, rate, best, ratio, ratio < params.threshold))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class FairnessCheck:
    """The judgement of one closed window ``[start, end)`` of event time; ``closed_by`` is the
    event (id, ts, t) whose time closed it."""

    start: float
    end: float
    groups: tuple[GroupFigures, ...]
    disparities: tuple[Disparity, ...]
    closed_by: tuple[str, str, float]

    __setstate__ = restore_fields

    @property
    def breaches(self) -> tuple[Disparity, ...]:
        return tuple(d for d in self.disparities if d.breached)


class FairnessTracker:
    """Per group counts of the current window, the checks of the closed ones, and the boost
    the constraint gives each group. Bounded: a few counters and a boost per group value;
    picklable."""

    # Defaults for what a tracker pickled before it existed lacks (its constraint restarts at 0).
    boosts: Mapping[str, float] = MappingProxyType({})

    def __init__(self, params: FairnessParams) -> None:
        self.params = params
        self.window: int | None = None  # index of the current window
        self.counts: dict[tuple[str, str], list[int]] = {}  # (dimension, value) -> OUTCOMES counts
        self.unreported: dict[tuple[str, str, str], int] = {}  # (dimension, value, outcome) -> since drained
        self.last: FairnessCheck | None = None
        self.checks: list[FairnessCheck] = []  # closed since the engine last drained them
        self.boosts = {}  # "dimension=value" -> the constraint's boost (positive ones only); replaced, never mutated

    def window_of(self, t: float) -> int:
        return int(t // (self.params.window_days * DAY))

    def advance(self, t: float, event_id: str = "", ts: str = "") -> None:
        """Move the event-time clock to ``t`` (never back): closing the current window judges it."""
        w = self.window_of(t)
        if self.window is None:
            self.window = w
            return
        if w <= self.window:
            return
        span = self.params.window_days * DAY
        groups = tuple(GroupFigures(d, v, *c) for (d, v), c in self.counts.items())
        check = FairnessCheck(self.window * span, (self.window + 1) * span, groups,
                              disparities(groups, self.params), (event_id, ts, t))
        self.window, self.counts, self.last = w, {}, check
        self.checks.append(check)
        if self.params.floor > 0.0:
            self.boosts = self.control(check)

    def control(self, check: FairnessCheck) -> dict[str, float]:
        """The boost per group after ``check``: each judged group's moves by ``gain`` times its
        exposure ratio's shortfall from the floor (down when it is above), within ``[0, boost]``;
        an unjudged group's stays (its window told nothing)."""
        p, boosts = self.params, dict(self.boosts)
        for d in check.disparities:
            if d.metric == "exposure":
                group = f"{d.dimension}={d.value}"
                boosts[group] = min(max(boosts.get(group, 0.0) + p.gain * (p.floor - d.ratio), 0.0), p.boost)
        return {group: b for group, b in boosts.items() if b > 0.0}

    def _count(self, groups: Groups, i: int) -> None:
        outcome = OUTCOMES[i]
        for dimension, value in zip(DIMENSIONS, groups, strict=True):
            key = (dimension, value)
            counts = self.counts.get(key)
            if counts is None:
                counts = self.counts[key] = [0, 0, 0, 0]
            counts[i] += 1
            reported = (dimension, value, outcome)
            self.unreported[reported] = self.unreported.get(reported, 0) + 1

    def eligible(self, groups: Groups) -> None:
        self._count(groups, 0)

    def prompted(self, groups: Groups) -> None:
        self._count(groups, 1)

    def accepted(self, groups: Groups) -> None:
        self._count(groups, 2)

    def converted(self, groups: Groups) -> None:
        self._count(groups, 3)

    def boost(self, groups: Groups) -> float:
        """What the constraint adds to a prompt score of a customer of ``groups``."""
        boosts = self.boosts
        if not boosts:
            return 0.0
        return max(boosts.get(f"{dimension}={value}", 0.0) for dimension, value in zip(DIMENSIONS, groups, strict=True))

    def drain(self) -> tuple[list[FairnessCheck], dict[tuple[str, str, str], int]]:
        """The checks made and the counts added since the last drain (for alerts and metrics)."""
        checks, counts = self.checks, self.unreported
        self.checks, self.unreported = [], {}
        return checks, counts
