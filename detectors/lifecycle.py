"""Alert lifecycle per customer, after the conventions of Alertmanager and PagerDuty:
de-duplication, grouping, escalation and snoozes. Plain Python, driven by event time only,
so a replay decides exactly what live processing decided.

``AlertLifecycle.on_alert(alert, t)`` takes a triggered alert and returns what to emit (or
``None``) and the lifecycle changes to audit:

- **Dedup key** ``customer:type:bucket`` (``bucket`` = event time // ``dedup_bucket_minutes``):
  a repeated trigger with the same key and no higher severity updates the open alert (its
  count) and emits nothing (``deduplicated``).
- **Grouping**: one customer's alerts for one audience within ``group_window_minutes`` of
  the group's first alert form one alert: a trigger with a new dedup key emits a new
  revision of the group's alert carrying all the group's reasons (``grouped``), under the
  group's ``group_key``. The audiences are grouped apart: the risk team's alerts (fraud,
  takeover, AML) and the RM's (``schemas.outputs.RM_ALERTS``: churn, complaints), so an
  RM's alert never carries a fraud reason, and a fraud group never turns into an RM's.
- **Escalation**: a trigger whose severity is above the group's emits a new revision,
  status ``escalated``.
- **Snooze**: ``snooze(alert_type, until_t)`` suppresses that type (``*``: every type) for
  the customer until the event time ``until_t`` (``suppressed``); a snooze ends by itself.

Every emitted record is a new ``Alert`` with its own deterministic ``alert_id`` (from the
triggering event and type), ``status`` (``firing`` for the first of a group, then
``grouped`` / ``escalated``), ``revision`` (1, 2, ...), ``dedup_key`` and ``group_key``;
consumers show the latest revision per ``group_key``.

>>> from schemas.outputs import Reason
>>> def alert(i, kind, severity):
...     return Alert(f"al-{i}", kind, severity, 0.7, "c1", None, f"e{i}", "2026-01-01T00:00:00Z",
...                  "2026-01-01T00:00:00Z", (Reason(f"r{i}", f"reason {i}", None, 0.5),), "m1")
>>> life, params = AlertLifecycle(), LifecycleParams()
>>> first, _ = life.on_alert(alert(1, "suspicious_transaction", "medium"), 0.0, params)
>>> first.status, first.revision, first.group_key
('firing', 1, 'c1:al-1')
>>> life.on_alert(alert(2, "suspicious_transaction", "medium"), 60.0, params)[0] is None
True
>>> up, _ = life.on_alert(alert(3, "suspicious_transaction", "high"), 120.0, params)
>>> up.status, up.revision, up.severity, [r.code for r in up.reasons]
('escalated', 2, 'high', ['r3', 'r1'])
>>> grouped, _ = life.on_alert(alert(4, "aml_pattern", "medium"), 180.0, params)
>>> grouped.status, grouped.revision, grouped.severity, grouped.type
('grouped', 3, 'high', 'aml_pattern')
>>> churn, _ = life.on_alert(alert(5, "churn_risk", "medium"), 240.0, params)
>>> churn.status, churn.group_key, [r.code for r in churn.reasons]
('firing', 'c1:al-5', ['r5'])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from schemas.outputs import RM_ALERTS, Alert, LifecycleChange, Reason, format_ts

SEVERITY_RANK: Final = {"low": 0, "medium": 1, "high": 2, "critical": 3}
ALL_TYPES: Final = "*"


@dataclass(frozen=True, slots=True)
class LifecycleParams:
    """How alerts are de-duplicated and grouped (event-time minutes)."""

    enabled: bool = True
    dedup_bucket_minutes: float = 60.0
    group_window_minutes: float = 15.0
    max_reasons: int = 12


class _Group:
    __slots__ = ("count", "key", "keys", "reasons", "revision", "score", "severity", "start_t")

    def __init__(self, key: str, start_t: float) -> None:
        self.key = key
        self.start_t = start_t
        self.keys: dict[str, int] = {}  # dedup key -> highest severity rank seen
        self.revision = 0
        self.severity = -1
        self.score = 0.0
        self.reasons: tuple[Reason, ...] = ()
        self.count = 0

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


_SEVERITIES: Final = ("low", "medium", "high", "critical")


def _merge(new: tuple[Reason, ...], old: tuple[Reason, ...], limit: int) -> tuple[Reason, ...]:
    """The new trigger's reasons first, then the group's earlier ones not repeated by code."""
    seen = {r.code for r in new}
    return (*new, *(r for r in old if r.code not in seen))[:limit]


def audience(alert_type: str) -> str:
    """Whose an alert type is: ``rm`` (``RM_ALERTS``) or ``risk``."""
    return "rm" if alert_type in RM_ALERTS else "risk"


class AlertLifecycle:
    """One customer's open alert group per audience and snoozes; small and picklable."""

    __slots__ = ("groups", "snoozes")

    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}  # audience -> its open group
        self.snoozes: dict[str, float] = {}  # alert type (or "*") -> snoozed until (event time)

    def snooze(self, customer_id: str, alert_type: str, until_t: float, t: float, event_id: str,
               ts: str) -> LifecycleChange:
        """Suppress ``alert_type`` for this customer until ``until_t``; ``until_t <= t`` lifts it."""
        if until_t > t:
            self.snoozes[alert_type] = until_t
            action = "snoozed"
        else:
            self.snoozes.pop(alert_type, None)
            action = "unsnoozed"
        return LifecycleChange(f"lc-{event_id}", action, customer_id, alert_type, None, None,
                               event_id, ts, format_ts(until_t) if until_t > t else None)

    def _snoozed(self, alert_type: str, t: float) -> bool:
        for key in (alert_type, ALL_TYPES):
            until = self.snoozes.get(key)
            if until is not None:
                if t < until:
                    return True
                del self.snoozes[key]  # expired
        return False

    def on_alert(self, alert: Alert, t: float, params: LifecycleParams
                 ) -> tuple[Alert | None, list[LifecycleChange]]:
        """What to emit for a triggered ``alert`` at event time ``t``, and what changed."""
        customer = alert.customer_id
        bucket = int(t // (params.dedup_bucket_minutes * 60.0))
        dedup_key = f"{customer}:{alert.type}:{bucket}"
        change_id = f"lc-{alert.alert_id}"
        if self._snoozed(alert.type, t):
            return None, [LifecycleChange(change_id, "suppressed", customer, alert.type, alert.alert_id,
                                          dedup_key, alert.event_id, alert.event_ts, None)]
        whose = audience(alert.type)
        group = self.groups.get(whose)
        if group is None or t - group.start_t > params.group_window_minutes * 60.0:
            group = self.groups[whose] = _Group(f"{customer}:{alert.alert_id}", t)
        rank = SEVERITY_RANK[alert.severity]
        seen = group.keys.get(dedup_key)
        group.count += 1
        if seen is not None and rank <= seen:
            return None, [LifecycleChange(change_id, "deduplicated", customer, alert.type, alert.alert_id,
                                          dedup_key, alert.event_id, alert.event_ts, group.key)]
        if group.revision == 0:
            status = "firing"
        elif rank > group.severity:
            status = "escalated"
        else:
            status = "grouped"
        group.keys[dedup_key] = max(rank, seen if seen is not None else -1)
        group.revision += 1
        group.severity = max(group.severity, rank)
        group.score = max(group.score, alert.score)
        group.reasons = _merge(alert.reasons, group.reasons, params.max_reasons)
        emitted = dataclasses.replace(
            alert, severity=_SEVERITIES[group.severity], score=group.score, reasons=group.reasons,
            status=status, dedup_key=dedup_key, group_key=group.key, revision=group.revision)
        changes = [] if status == "firing" else [LifecycleChange(
            change_id, status, customer, alert.type, alert.alert_id, dedup_key, alert.event_id,
            alert.event_ts, group.key)]
        return emitted, changes

    def __getstate__(self) -> tuple[object, ...]:
        return (self.groups, self.snoozes)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        groups, self.snoozes = state  # type: ignore[assignment]
        if groups is None or isinstance(groups, _Group):  # an earlier release's one group for every type:
            groups = {"risk": groups} if groups is not None else {}  # it ends within its window anyway
        self.groups = groups  # type: ignore[assignment]
