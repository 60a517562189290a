"""Configurable rules over a transaction's profile features.

``evaluate_rules(features, txn, params)`` (features in ``detectors.profile.FEATURES`` order)
returns the rules the transaction hits, each a
``RuleHit`` with the alert type it points to, a human-readable text, the value that
crossed the line and a weight in [0, 1] (how strongly it alone suggests fraud or
laundering). A rule with ``always_alert`` describes a regulatory pattern that an analyst
must review whatever the model score.

>>> from schemas.events import parse_event
>>> txn = parse_event(b'{"kind":"transaction","event_id":"e","customer_id":"c",'
...     b'"ts":"2026-01-01T10:00:00Z","amount":48000,"txn_type":"cash_deposit","direction":"credit"}')
>>> from detectors.profile import FEATURES
>>> features = [3.0 if name == "near_threshold_cash_3d" else 0.0 for name in FEATURES]
>>> hits = evaluate_rules(features, txn, RuleParams())
>>> [(h.code, h.alert_type, h.always_alert) for h in hits]
[('structuring', 'aml_pattern', True)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from detectors.profile import INDEX
from schemas.events import Transaction
from schemas.outputs import AlertType
from schemas.snapshots import restore_fields
from schemas.texts import EN, render_reason

OUTGOING_TRANSFER_TYPES: Final = frozenset({"transfer"})


@dataclass(frozen=True, slots=True)
class RuleParams:
    """Thresholds of the rules. Amounts are in the transactions' currency."""

    large_amount_ratio: float = 5.0  # amount >= ratio x the customer's typical amount
    large_amount_min: float = 1_000.0  # ... and at least this much
    large_amount_min_history: int = 5  # transactions needed before "typical" means anything
    velocity_1h: int = 8  # transactions in one hour
    card_testing_small_1h: int = 5  # tiny payments in one hour
    takeover_min_amount: float = 2_000.0  # an outgoing transfer this large after a security change
    takeover_failed_logins: int = 3
    structuring_count_3d: int = 3  # cash deposits just under the reporting threshold in 3 days
    in_out_ratio: float = 0.8  # share of the last day's inflow sent straight out
    in_out_min_amount: float = 10_000.0
    dormant_min_amount: float = 5_000.0
    foreign_ratio: float = 3.0  # unusual foreign spend: new country and this x typical

    __setstate__ = restore_fields


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that a transaction hit."""

    code: str
    alert_type: AlertType
    text: str
    value: float
    weight: float
    always_alert: bool = False
    args: dict[str, Any] | None = field(default=None, compare=False)  # what ``text`` says (schemas.texts)


def _hit(code: str, alert_type: AlertType, value: float, weight: float, always_alert: bool = False,
         **args: Any) -> RuleHit:
    """A hit whose text the catalogue renders from ``args`` (in English; alerts localize it)."""
    return RuleHit(code, alert_type, render_reason(code, EN, args), value, weight, always_alert, args)


_HIST_TXNS, _AMOUNT_TO_MEAN, _LOG_AMOUNT, _CNT_1H, _SMALL_CNT_1H = (
    INDEX[n] for n in ("hist_txns", "amount_to_mean", "log_amount", "cnt_1h", "small_cnt_1h"))
_SECURITY, _FAILED_LOGINS, _NEW_COUNTERPARTY, _NEW_DEVICE, _NEAR_THRESHOLD = (
    INDEX[n] for n in ("security_change_24h", "failed_logins_1h", "new_counterparty", "new_device",
                       "near_threshold_cash_3d"))
_OUT_OF_IN, _LOG_INFLOW, _DORMANT, _NEW_COUNTRY = (
    INDEX[n] for n in ("outflow_of_inflow_24h", "log_inflow_24h", "dormant", "new_country"))


def _typical(features: list[float]) -> float:
    """The customer's typical amount, undone from the feature (amount / (typical + 1))."""
    ratio = features[_AMOUNT_TO_MEAN]
    amount = math.expm1(features[_LOG_AMOUNT])
    return amount / ratio - 1.0 if ratio > 0 else 0.0


def evaluate_rules(f: list[float], txn: Transaction, params: RuleParams) -> list[RuleHit]:
    """The rules ``txn`` hits, given its profile features (``detectors.profile.FEATURES`` order)."""
    hits: list[RuleHit] = []
    amount, debit = txn.amount, txn.direction == "debit"
    ratio = f[_AMOUNT_TO_MEAN]
    if (debit and ratio >= params.large_amount_ratio and amount >= params.large_amount_min
            and math.expm1(f[_HIST_TXNS]) >= params.large_amount_min_history):
        hits.append(_hit("large_vs_history", "suspicious_transaction", round(ratio, 3), 0.35,
                         amount=amount, ratio=ratio, typical=_typical(f), currency=txn.currency))
    per_hour = round(math.expm1(f[_CNT_1H])) + 1
    if per_hour >= params.velocity_1h:
        hits.append(_hit("velocity_burst", "suspicious_transaction", float(per_hour), 0.3, count=per_hour))
    small = f[_SMALL_CNT_1H]
    if small >= params.card_testing_small_1h:
        hits.append(_hit("card_testing", "suspicious_transaction", small, 0.5, count=small))
    outgoing = debit and (txn.txn_type in OUTGOING_TRANSFER_TYPES or txn.txn_type is None)
    if (outgoing and amount >= params.takeover_min_amount
            and (f[_SECURITY] > 0 or f[_FAILED_LOGINS] >= params.takeover_failed_logins)
            and (f[_NEW_COUNTERPARTY] > 0 or f[_NEW_DEVICE] > 0)):
        hits.append(_hit("takeover_sequence", "account_takeover", amount, 0.6, True,
                         amount=amount, currency=txn.currency))
    near = f[_NEAR_THRESHOLD]
    if near >= params.structuring_count_3d:
        hits.append(_hit("structuring", "aml_pattern", near, 0.6, True, count=near))
    # Mule pattern: money that just came in leaves at once, by transfer, to someone new.
    out_ratio = f[_OUT_OF_IN]
    if outgoing and out_ratio >= params.in_out_ratio and f[_NEW_COUNTERPARTY] > 0:
        inflow = math.expm1(f[_LOG_INFLOW])
        if inflow >= params.in_out_min_amount:
            hits.append(_hit("rapid_in_out", "aml_pattern", round(out_ratio, 3), 0.45, True,
                             ratio=out_ratio, inflow=inflow, currency=txn.currency))
    if f[_DORMANT] > 0 and amount >= params.dormant_min_amount:
        hits.append(_hit("dormant_reactivation", "aml_pattern", amount, 0.4, amount=amount, currency=txn.currency))
    if f[_NEW_COUNTRY] > 0 and ratio >= params.foreign_ratio:
        hits.append(_hit("unusual_foreign", "suspicious_transaction", round(ratio, 3), 0.4,
                         ratio=ratio, country=txn.counterparty_country))
    return hits
