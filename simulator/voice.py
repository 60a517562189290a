"""What simulated customers write: support-chat texts in English and Chinese, with labels.

``voice_event(trigger, seed, kind)`` makes the ``support_chat`` event with ``properties.text``
that follows ``trigger`` (an app event), or None. ``kind`` says who writes: a ``churner`` on
the way out (negative; often saying they close the account, move their money or go to the
regulator), a customer who ``wobble``s (negative, complaints), or an ``ordinary`` one (mostly
questions and thanks, now and then a grumble). The labels ride along in
``properties.label`` (``language``, ``sentiment``, ``intent``), for ``bench.voice``; the
engine reads only ``properties.text``.

Nothing here draws from the simulation's generator or takes an event number: the text's
generator is seeded by the trigger's id and the event's id derives from it, so the rest of the
stream is the same, event for event, with or without texts.

>>> trigger = {"kind": "app", "event_id": "e-7-42", "ts": "2026-01-05T10:00:00.000Z",
...            "customer_id": "c000001", "action": "complaint", "session_id": "s1"}
>>> event = voice_event(trigger, 7, "churner")
>>> event["event_id"], event["action"], event["session_id"], sorted(event["properties"]["label"])
('e-7-42-v', 'support_chat', 's1', ['intent', 'language', 'sentiment'])
>>> voice_event(trigger, 7, "churner") == event
True
"""

from __future__ import annotations

import random
import zlib
from typing import Any, Final

#: Share of customers who write in Chinese (by customer id).
CHINESE_SHARE: Final = 0.6
#: Share of ordinary logins followed by a chat text (by event id).
ORDINARY_TEXT_RATE: Final = 0.004

# (sentiment, intent, texts) per language; {n} is a number the scorer must mask in quotes.
_EN: Final[dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]]] = {
    "exit": (
        ("negative", "close_account", (
            "Please close my account, I've had enough of your fees.",
            "I want to close my savings account today. Card ending {n}.",
            "Cancel my credit card and close the account linked to it.",
            "I'm closing my account once the last payment clears.")),
        ("negative", "transfer_out", (
            "I'm moving all my money to another bank, your rates are a joke.",
            "Transfer everything out to my other bank, I'm done with you.",
            "I'm switching to another bank next month, {n} years with you for nothing.",
            "I'm pulling my savings out, the interest is insulting.")),
        ("negative", "regulator_complaint", (
            "If this isn't fixed I will report you to the regulator.",
            "I have already called 12378 about the product you mis-sold me.",
            "My complaint is going to the financial ombudsman, reference {n}.")),
    ),
    "negative": (
        ("negative", "complaint", (
            "I want to complain about the fee of {n} yuan on my statement.",
            "This is the third time my card was declined, I'm filing a complaint.",
            "I'd like to make a formal complaint about the branch staff.")),
        ("negative", "none", (
            "Still waiting for my refund after three weeks. Unacceptable.",
            "The transfer failed again and the money is stuck.",
            "I've been on hold for {n} minutes and nobody answers.",
            "Great, another failed payment. Just wonderful.",
            "Your app crashed again while I was paying rent.")),
    ),
    "neutral": (
        ("neutral", "none", (
            "What time does the branch open on Saturday?",
            "How do I change my registered mobile number?",
            "When does my deposit mature?",
            "Can you check whether my salary of {n} has arrived?",
            "What is the annual fee for the premium card?",
            "How long does an international transfer take?")),
    ),
    "positive": (
        ("positive", "none", (
            "Thank you, the agent sorted out my problem in five minutes.",
            "Great job on the new app, it's much faster.",
            "Thanks for refunding the fee so quickly.",
            "Very helpful advice from my relationship manager, thanks.")),
    ),
}
_ZH: Final[dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]]] = {
    "exit": (
        ("negative", "close_account", (
            "我要销户，你们的服务太差了。",
            "尾号{n}的卡帮我注销，以后不用你们银行了。",
            "请尽快帮我办理销户，太失望了。")),
        ("negative", "transfer_out", (
            "利息这么低，我准备把钱全部转到别的银行。",
            "理财到期后我就全部转出，再也不来了。",
            "我已经在别的券商开户了，准备转户。")),
        ("negative", "regulator_complaint", (
            "再不处理我就打12378投诉到金融监管总局。",
            "我已经向银保监会反映了你们误导销售的问题。",
            "不退钱我就去监管部门投诉，工单号{n}。")),
    ),
    "negative": (
        ("negative", "complaint", (
            "手续费乱扣了{n}元，我要投诉！",
            "我要投诉你们网点柜员态度恶劣。",
            "信用卡年费莫名其妙被扣了，必须投诉。")),
        ("negative", "none", (
            "转账又失败了，到底怎么回事？",
            "客服电话打了{n}分钟没人接，太慢了。",
            "呵呵，真是好银行，卡又被冻结了。",
            "APP又闪退了，气死我了。")),
    ),
    "neutral": (
        ("neutral", "none", (
            "请问周六网点几点开门？",
            "怎么修改预留手机号？",
            "我的定期什么时候到期？",
            "帮我查一下尾号{n}的卡工资到账没有。",
            "白金信用卡的年费是多少？",
            "跨境汇款一般需要几天到账？")),
    ),
    "positive": (
        ("positive", "none", (
            "谢谢客服，五分钟就帮我解决了问题。",
            "新版APP速度快多了，点赞！",
            "手续费这么快就退回来了，感谢。",
            "客户经理的建议很有帮助，非常满意。")),
    ),
}
#: Who writes what: the mood of their text, by share.
_MOODS: Final = {
    "churner": (("exit", 0.6), ("negative", 0.35), ("neutral", 0.05)),
    "wobble": (("negative", 0.7), ("neutral", 0.2), ("exit", 0.1)),
    "ordinary": (("neutral", 0.6), ("positive", 0.3), ("negative", 0.1)),
}
VOICE_TRIGGERS: Final = frozenset({"complaint", "support_chat"})


def writes_chinese(customer_id: str) -> bool:
    """Whether this customer writes in Chinese (stable per customer)."""
    return zlib.crc32(customer_id.encode()) % 1000 < CHINESE_SHARE * 1000


def ordinary_text_due(event_id: str) -> bool:
    """Whether an ordinary customer's login is followed by a chat text (stable per event)."""
    return zlib.crc32(event_id.encode()) % 100_000 < ORDINARY_TEXT_RATE * 100_000


def voice_event(trigger: dict[str, Any], seed: int, kind: str) -> dict[str, Any]:
    """The ``support_chat`` text event that follows ``trigger``, written by a ``kind`` customer."""
    rng = random.Random(f"{seed}:{trigger['event_id']}")
    mood = _pick(rng, _MOODS[kind])
    chinese = writes_chinese(trigger["customer_id"])
    sentiment, intent, texts = rng.choice((_ZH if chinese else _EN)[mood])
    text = rng.choice(texts).format(n=rng.randrange(10, 100_000))
    event = {"kind": "app", "event_id": f"{trigger['event_id']}-v", "ts": trigger["ts"],
             "customer_id": trigger["customer_id"], "action": "support_chat"}
    for name in ("session_id", "device_id", "channel"):
        if name in trigger:
            event[name] = trigger[name]
    event["properties"] = {"text": text, "label": {"language": "zh" if chinese else "en",
                                                   "sentiment": sentiment, "intent": intent}}
    return event


def _pick(rng: random.Random, shares: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    for name, share in shares:
        r -= share
        if r < 0:
            return name
    return shares[-1][0]
