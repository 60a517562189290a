"""What people read, in each supported locale: reason texts, labels, amounts and times.

Every human-readable text the engine writes (alert and prompt reasons) and every text shown
to people (group-robot messages, the dashboard) is rendered here, from a code and its
arguments, so that one catalogue holds each text in every locale. A ``Reason`` keeps its
``args`` beside the rendered ``text``, which lets a reader render it again in another locale
(the dashboard does, in its own).

- ``LOCALES``: ``en`` and ``zh-CN``. English texts are what the engine always wrote.
- Amounts: ``en`` writes ``1,234.50`` (the currency only where the text names it); ``zh-CN``
  writes ``¥1,234.50`` for CNY and ``1,234.50 USD`` for the others.
- Times: the data keeps UTC (RFC 3339); people read them in a display time zone, by default
  the locale's (``UTC`` for ``en``, ``Asia/Shanghai`` for ``zh-CN``).

>>> render_reason("large_vs_history", "zh-CN", {"amount": 12000.0, "ratio": 8.0, "typical": 1500.0, "currency": "CNY"})
'金额 ¥12,000.00，为该客户常规金额 ¥1,500.00 的 8.0 倍'
>>> render_reason("large_vs_history", "en", {"amount": 12000.0, "ratio": 8.0, "typical": 1500.0, "currency": "CNY"})
"amount 12,000.00 is 8.0x the customer's typical 1,500.00"
>>> label("alert_type", "account_takeover", "zh-CN"), label("severity", "high", "zh-CN")
('账户盗用', '高')
>>> format_time("2026-01-05T11:56:33.860Z", "zh-CN")
'2026-01-05 19:56:33 (北京时间)'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EN: Final = "en"
ZH_CN: Final = "zh-CN"
LOCALES: Final = (EN, ZH_CN)
DEFAULT_TIMEZONE: Final = {EN: "UTC", ZH_CN: "Asia/Shanghai"}
#: Arguments that are amounts of money: written with the reason's ``currency`` argument.
MONEY_ARGS: Final = frozenset({"amount", "typical", "inflow"})
_TIMEZONE_NAMES: Final = {(ZH_CN, "Asia/Shanghai"): "北京时间"}


def check_locale(locale: str) -> str:
    """``locale`` if it is supported; ``ValueError`` naming the supported ones otherwise."""
    if locale not in LOCALES:
        raise ValueError(f"unsupported locale {locale!r}; expected one of {', '.join(LOCALES)}")
    return locale


@lru_cache(maxsize=32)
def timezone(name: str) -> ZoneInfo:
    """The display time zone ``name`` (IANA); ``ValueError`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)") from None


def format_money(amount: float, currency: str | None, locale: str) -> str:
    """An amount for people.

    >>> format_money(1234.5, "CNY", "zh-CN"), format_money(1234.5, "USD", "zh-CN"), format_money(1234.5, "CNY", "en")
    ('¥1,234.50', '1,234.50 USD', '1,234.50')
    """
    if locale == ZH_CN:
        if currency in (None, "CNY"):
            return f"¥{amount:,.2f}"
        return f"{amount:,.2f} {currency}"
    return f"{amount:,.2f}"


def format_time(ts: str, locale: str, zone: str = "") -> str:
    """An RFC 3339 time of the data (UTC) for people, in ``zone`` (default: the locale's);
    ``en`` in UTC keeps the RFC 3339 text as it is.

    >>> format_time("2026-01-05T11:56:33.860Z", "en"), format_time("2026-01-05T11:56:33.860Z", "en", "Asia/Shanghai")
    ('2026-01-05T11:56:33.860Z', '2026-01-05 19:56:33 (Asia/Shanghai)')
    """
    zone = zone or DEFAULT_TIMEZONE[locale]
    if locale == EN and zone == "UTC":
        return ts
    try:
        at = datetime.fromisoformat(ts)
    except ValueError:
        return ts  # not a time: shown as it is
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    local = at.astimezone(timezone(zone))
    return f"{local:%Y-%m-%d %H:%M:%S} ({_TIMEZONE_NAMES.get((locale, zone), zone)})"


# -- labels -------------------------------------------------------------------------------

_LABELS: Final[dict[str, dict[str, dict[str, str]]]] = {
    "alert_type": {
        "suspicious_transaction": {EN: "suspicious transaction", ZH_CN: "可疑交易"},
        "account_takeover": {EN: "account takeover", ZH_CN: "账户盗用"},
        "aml_pattern": {EN: "money-laundering pattern", ZH_CN: "反洗钱可疑模式"},
        "churn_risk": {EN: "churn risk", ZH_CN: "流失风险"},
        "complaint_escalation": {EN: "complaint escalation", ZH_CN: "投诉升级"},
        "fairness_drift": {EN: "fairness drift", ZH_CN: "推荐公平性偏移"},
    },
    "severity": {
        "low": {EN: "low", ZH_CN: "低"}, "medium": {EN: "medium", ZH_CN: "中"},
        "high": {EN: "high", ZH_CN: "高"}, "critical": {EN: "critical", ZH_CN: "严重"},
    },
    "status": {  # an alert's lifecycle status, then its status in the analysts' workflow
        "firing": {EN: "firing", ZH_CN: "新告警"}, "grouped": {EN: "grouped", ZH_CN: "已合并"},
        "escalated": {EN: "escalated", ZH_CN: "已升级"}, "open": {EN: "open", ZH_CN: "待处理"},
        "acknowledged": {EN: "acknowledged", ZH_CN: "已确认"}, "assigned": {EN: "assigned", ZH_CN: "已分派"},
        "snoozed": {EN: "snoozed", ZH_CN: "已暂停"}, "closed_fraud": {EN: "closed: fraud", ZH_CN: "结案：确认欺诈"},
        "closed_legit": {EN: "closed: false positive", ZH_CN: "结案：误报"}, "new": {EN: "new", ZH_CN: "新建"},
        "accepted": {EN: "accepted", ZH_CN: "已接受"}, "dismissed": {EN: "dismissed", ZH_CN: "已忽略"},
        "converted": {EN: "converted", ZH_CN: "已转化"}, "expired": {EN: "expired", ZH_CN: "已过期"},
    },
    "field": {
        "customer": {EN: "customer", ZH_CN: "客户"}, "rm": {EN: "RM", ZH_CN: "客户经理"},
        "score": {EN: "score", ZH_CN: "评分"}, "event_time": {EN: "event time", ZH_CN: "事件时间"},
        "alert": {EN: "alert", ZH_CN: "告警编号"}, "prompt": {EN: "next best action", ZH_CN: "下一步最佳行动"},
    },
    "trigger": {
        "maturity": {EN: "maturity", ZH_CN: "产品到期"}, "large_credit": {EN: "large credit", ZH_CN: "大额入账"},
        "product_view": {EN: "product view", ZH_CN: "浏览产品"},
        "login_after_absence": {EN: "login after absence", ZH_CN: "久未登录后登录"},
        "churn_rising": {EN: "churn rising", ZH_CN: "流失风险上升"},
    },
}


def label(kind: str, key: str, locale: str) -> str:
    """The name of ``key`` (an alert type, severity, status, field or trigger) for people;
    an unknown key is shown as it is, with its underscores as spaces."""
    names = _LABELS.get(kind, {}).get(key)
    if names is None:
        return key.replace("_", " ")
    return names.get(locale) or names[EN]


# -- reasons ------------------------------------------------------------------------------

#: The churn exit signals' names (``detectors.churn.SIGNALS``).
_SIGNALS: Final = {
    "complaint": {EN: "complaints", ZH_CN: "投诉"},
    "close_view": {EN: "account-closing page views", ZH_CN: "浏览销户页面"},
    "transfer_out_view": {EN: "transfer-out page views", ZH_CN: "浏览转出页面"},
    "unsubscribe": {EN: "unsubscribes", ZH_CN: "退订"},
    "outflow": {EN: "money moved out", ZH_CN: "资金转出"},
    "balance_decline": {EN: "balance below half its peak", ZH_CN: "余额低于峰值一半"},
    "activity_decline": {EN: "activity slowing down", ZH_CN: "活跃度下降"},
    "voice_negative": {EN: "negative messages", ZH_CN: "负面留言"},
    "voice_exit_intent": {EN: "says they are leaving", ZH_CN: "表示要销户或转出"},
    "voice_regulator": {EN: "names the regulator", ZH_CN: "提及监管投诉"},
}


def _exit_signals(args: Mapping[str, Any], locale: str) -> str:
    separator = "、" if locale == ZH_CN else ", "
    return separator.join(f"{(_SIGNALS.get(name) or {EN: name}).get(locale, name)} {weight:.2f}"
                          for name, weight in args["signals"])


def _churn_voice(args: Mapping[str, Any], locale: str) -> str:
    signal = (_SIGNALS.get(args["signal"]) or {EN: args["signal"]}).get(locale, args["signal"])
    if locale == ZH_CN:
        return f"客户留言（{signal}）：“{args['phrase']}”"
    return f'customer wrote ({signal}): "{args["phrase"]}"'


def _maturity(args: Mapping[str, Any], locale: str) -> str:
    source = args.get("source")
    if locale == ZH_CN:
        return f"产品到期（{source}）" if source else "到期提醒"
    return source or "maturity notice"


Template = str | Callable[[Mapping[str, Any], str], str]
_FAIRNESS_ZH: Final = {"segment": "客户分层", "age_band": "年龄段", "gender": "性别", "city_tier": "城市等级",
                       "exposure": "触达率", "acceptance": "采纳率", "conversion": "转化率"}

#: Each reason code's text in every locale: a ``str.format`` template over the reason's
#: ``args`` (amounts already written for the locale), or a function of them.
REASONS: Final[dict[str, dict[str, Template]]] = {
    # rule hits (detectors.rules)
    "large_vs_history": {EN: "amount {amount} is {ratio:.1f}x the customer's typical {typical}",
                         ZH_CN: "金额 {amount}，为该客户常规金额 {typical} 的 {ratio:.1f} 倍"},
    "velocity_burst": {EN: "{count} transactions within one hour", ZH_CN: "一小时内 {count} 笔交易"},
    "card_testing": {EN: "{count:.0f} tiny payments within one hour (card testing)",
                     ZH_CN: "一小时内 {count:.0f} 笔小额支付（疑似盗卡测试）"},
    "takeover_sequence": {EN: "outgoing {amount} to a new payee or from a new device within 24 h "
                              "of a security change or failed logins",
                          ZH_CN: "安全信息变更或登录失败后 24 小时内，向新收款方或从新设备转出 {amount}"},
    "structuring": {EN: "{count:.0f} cash deposits just under the reporting threshold within 3 days",
                    ZH_CN: "3 天内 {count:.0f} 笔略低于申报门槛的现金存款（疑似拆分）"},
    "rapid_in_out": {EN: "{ratio:.0%} of the last day's inflow of {inflow} already sent out",
                     ZH_CN: "过去一天流入的 {inflow} 中已有 {ratio:.0%} 转出"},
    "dormant_reactivation": {EN: "{amount} moved after a long dormant period", ZH_CN: "长期休眠后转出 {amount}"},
    "unusual_foreign": {EN: "{ratio:.1f}x typical spend in a new country {country}",
                        ZH_CN: "在新国家/地区 {country} 消费，为常规金额的 {ratio:.1f} 倍"},
    # the fraud models' features (detectors.fraud); the value is the feature's
    "model:amount_to_mean": {EN: "amount relative to the customer's typical amount",
                             ZH_CN: "金额相对该客户常规金额偏高"},
    "model:amount_z": {EN: "amount unusual for this customer", ZH_CN: "金额对该客户而言异常"},
    "model:log_amount": {EN: "large amount", ZH_CN: "金额较大"},
    "model:cp_fraud_rate_28d": {EN: "counterparty's recent confirmed fraud rate", ZH_CN: "交易对手近期确认欺诈率"},
    "model:cp_frauds_7d": {EN: "frauds confirmed at this counterparty in the last 7 days",
                           ZH_CN: "该交易对手近 7 天确认的欺诈"},
    "model:cp_frauds_28d": {EN: "frauds confirmed at this counterparty in the last 28 days",
                            ZH_CN: "该交易对手近 28 天确认的欺诈"},
    "model:cust_frauds_14d": {EN: "fraud confirmed on this customer in the last 14 days",
                              ZH_CN: "该客户近 14 天有确认的欺诈"},
    "model:new_counterparty": {EN: "first transaction with this counterparty", ZH_CN: "首次与该交易对手交易"},
    "model:new_device": {EN: "first use of this device", ZH_CN: "首次使用该设备"},
    "model:new_country": {EN: "first transaction in this country", ZH_CN: "首次在该国家/地区交易"},
    "model:velocity_1d": {EN: "more transactions today than usual", ZH_CN: "今日交易笔数高于平常"},
    "model:cnt_1h": {EN: "many transactions in the last hour", ZH_CN: "近一小时交易频繁"},
    "model:risk_amount": {EN: "amounts like this were often fraud recently", ZH_CN: "近期此类金额常为欺诈"},
    "model:risk_amount_to_mean": {EN: "amounts this far above the customer's usual were often fraud recently",
                                  ZH_CN: "近期高出客户常规如此之多的金额常为欺诈"},
    "model:risk_counterparty_state": {EN: "counterparties in this state were often fraud recently",
                                      ZH_CN: "近期处于此状态的交易对手常涉欺诈"},
    "model:risk_customer_state": {EN: "customers in this state were often defrauded recently",
                                  ZH_CN: "近期处于此状态的客户常遭欺诈"},
    "model:cp_fraud_logodds": {EN: "counterparty's recent confirmed fraud rate", ZH_CN: "交易对手近期确认欺诈率"},
    "model:local_hour": {EN: "time of day", ZH_CN: "交易时段"},
    "model:hour_share": {EN: "an hour of the day unusual for this customer", ZH_CN: "交易时段与该客户习惯不符"},
    "model:category_share": {EN: "a merchant category unusual for this customer", ZH_CN: "商户类别与该客户习惯不符"},
    "model:new_category": {EN: "first purchase in this merchant category", ZH_CN: "首次在该商户类别消费"},
    "model:spend_1h_to_typical": {EN: "spend in the last hour against the customer's typical amount",
                                  ZH_CN: "近一小时消费额相对该客户常规金额偏高"},
    "model:amount_vs_category": {EN: "amount unusual for this merchant category", ZH_CN: "金额对该商户类别而言异常"},
    "model:risk_category": {EN: "this merchant category was often fraud recently", ZH_CN: "近期该商户类别常涉欺诈"},
    "model:risk_category_amount": {EN: "amounts like this in this merchant category were often fraud recently",
                                   ZH_CN: "近期该商户类别的此类金额常为欺诈"},
    "model:risk_category_hour": {EN: "this merchant category at this hour was often fraud recently",
                                 ZH_CN: "近期该商户类别在此时段常涉欺诈"},
    "model:risk_channel_hour": {EN: "this channel at this hour was often fraud recently",
                                ZH_CN: "近期该渠道在此时段常涉欺诈"},
    "anomaly": {EN: "behaviour unlike the customer population's", ZH_CN: "行为与客户群体明显不同"},
    # churn (detectors.churn)
    "churn_no_activity": {EN: "probability of no activity in the next {horizon_days:g} d",
                          ZH_CN: "未来 {horizon_days:g} 天无活动的概率"},
    "churn_recency": {EN: "silent {silent_days:.0f} d against a usual gap of {usual_gap:.1f} d",
                      ZH_CN: "已 {silent_days:.0f} 天无活动，平常间隔 {usual_gap:.1f} 天"},
    "churn_activity_decline": {EN: "recent gap {recent_gap:.1f} d against {usual_gap:.1f} d",
                               ZH_CN: "近期活动间隔 {recent_gap:.1f} 天，平常 {usual_gap:.1f} 天"},
    "churn_exit_signals": {EN: _exit_signals, ZH_CN: _exit_signals},
    "churn_voice": {EN: _churn_voice, ZH_CN: _churn_voice},
    # customer voice (detectors.voice): the phrase is the customer's, masked and short
    "voice_regulator": {EN: 'threatens a complaint to the regulator: "{phrase}"', ZH_CN: "提及向监管投诉：“{phrase}”"},
    "voice_sentiment_drop": {EN: 'tone of recent messages fell from {usual:.2f} to {recent:.2f}: "{phrase}"',
                             ZH_CN: "近期留言情绪由 {usual:.2f} 降至 {recent:.2f}：“{phrase}”"},
    # next-best action (detectors.nba): the trigger, then why this action
    "trigger_maturity": {EN: _maturity, ZH_CN: _maturity},
    "trigger_large_credit": {EN: "{amount} {currency}", ZH_CN: "大额入账 {amount}"},
    "trigger_product_view": {EN: "viewed {product} for {seconds:.0f} s", ZH_CN: "浏览产品 {product} {seconds:.0f} 秒"},
    "trigger_login_after_absence": {EN: "first login in {days:.0f} days", ZH_CN: "{days:.0f} 天来首次登录"},
    "trigger_churn_rising": {EN: "churn score rose to {score:.2f}", ZH_CN: "流失评分升至 {score:.2f}"},
    "suitability": {EN: "product risk R{risk} within the customer's grade C{grade}",
                    ZH_CN: "产品风险等级 R{risk} 在客户风险承受等级 C{grade} 之内"},
    "expected_reward": {EN: "expected outcome {mean:.2f} for this context, best of {eligible} eligible actions",
                        ZH_CN: "当前情境下预期效果 {mean:.2f}，为 {eligible} 个可选行动中最优"},
    "exploration": {EN: "uncertainty of the estimate", ZH_CN: "估计的不确定性"},
    # fairness of next-best action (detectors.fairness)
    "fairness_ratio": {EN: "{dimension} {group}: {metric} {rate:.3f} is {ratio:.2f} of the best-served group's "
                           "{best:.3f} (threshold {threshold:.2f})",
                       ZH_CN: lambda a, _: (f"{_FAIRNESS_ZH.get(a['dimension'], a['dimension'])} {a['group']}："
                                            f"{_FAIRNESS_ZH.get(a['metric'], a['metric'])} {a['rate']:.3f}，"
                                            f"为最优群体 {a['best']:.3f} 的 {a['ratio']:.2f} 倍"
                                            f"（阈值 {a['threshold']:.2f}）")},
}


def render_reason(code: str, locale: str, args: Mapping[str, Any] | None) -> str:
    """The text of reason ``code`` with ``args`` in ``locale``; ``KeyError`` for a code the
    catalogue does not know (``localized_text`` falls back instead)."""
    template = REASONS[code].get(locale) or REASONS[code][EN]
    values = dict(args or {})
    if callable(template):
        return template(values, locale)
    currency = values.get("currency")
    for name in MONEY_ARGS & values.keys():
        values[name] = format_money(values[name], currency, locale)
    return template.format(**values)


def localized_text(code: str, text: str, args: Mapping[str, Any] | None, locale: str) -> str:
    """A reason's ``text`` in ``locale``: rendered from the catalogue, or ``text`` as it was
    when the catalogue cannot (an unknown code, or arguments it lacks)."""
    if code not in REASONS:
        return text
    try:
        return render_reason(code, locale, args)
    except (KeyError, ValueError, TypeError, IndexError):
        return text
