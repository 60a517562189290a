"""Customer voice: the scorer (both languages, intents, masking, hostile text), the corpus
accuracy floor, and the engine: churn exit signals quoting the customer and
``complaint_escalation`` alerts, in both locales."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from bench.voice import accuracy, read_corpus
from detectors.churn import SIGNALS
from detectors.customer import ViewParams
from detectors.fraud import FraudParams
from detectors.profile import ProfileParams
from detectors.rules import RuleParams
from detectors.voice import VoiceParams, VoiceScorer, VoiceState, mask
from engine.config import EngineConfig
from engine.shard import Shard, process_all
from schemas.events import parse_event
from schemas.outputs import Alert

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scorer() -> VoiceScorer:
    return VoiceScorer(VoiceParams())


@pytest.mark.parametrize(("text", "language", "label", "intent"), [
    ("Thank you, the agent fixed my card in five minutes!", "en", "positive", "none"),
    ("What time does the branch open on Saturday?", "en", "neutral", "none"),
    ("Your fees are outrageous. Close my account now.", "en", "negative", "close_account"),
    ("I'm moving all my savings to another bank.", "en", "negative", "transfer_out"),
    ("Fix it or I report you to the regulator.", "en", "negative", "regulator_complaint"),
    ("I want to complain about the rude teller.", "en", "negative", "complaint"),
    ("I don't want to close my account, just lower the fee.", "en", "neutral", "none"),
    ("谢谢客服，很快就解决了。", "zh", "positive", "none"),
    ("请问定期存款什么时候到期？", "zh", "neutral", "none"),
    ("服务太差了，我要销户。", "zh", "negative", "close_account"),
    ("利息太低，钱全部转到别的银行。", "zh", "negative", "transfer_out"),
    ("再不退钱我就打12378找金融监管总局！", "zh", "negative", "regulator_complaint"),
    ("我不想销户，只是问问年费。", "zh", "neutral", "none"),
    ("呵呵，真是好银行，卡又被冻结了。", "zh", "negative", "none"),
    ("我要销户, your app is terrible", "zh", "negative", "close_account"),  # mixed: CJK carries it
])
def test_language_sentiment_and_intent(scorer: VoiceScorer, text: str, language: str, label: str,
                                       intent: str) -> None:
    score = scorer.score(text)
    assert score is not None
    assert (score.language, score.label, score.intent) == (language, label, intent)
    assert -1.0 <= score.sentiment <= 1.0


def test_the_quoted_phrase_is_the_triggering_clause_masked_and_short(scorer: VoiceScorer) -> None:
    score = scorer.score("Hello. My card 6222020212345678 was blocked again! I'm closing my account, "
                         "call me on 13912345678 or mail li.wei@example.com, customer id C00012345.")
    assert score is not None and score.intent == "close_account"
    assert score.phrase.startswith("I'm closing my account")
    assert not any(ch.isdigit() for ch in score.phrase) and "@" not in score.phrase
    assert len(score.phrase) <= VoiceParams().quote_chars + 2
    zh = scorer.score("卡号6222020212345678又被冻结了，我要去银保监会投诉，电话13912345678")
    assert zh is not None and zh.intent == "regulator_complaint"
    assert "银保监" in zh.phrase and not any(ch.isdigit() for ch in zh.phrase)
    assert mask("x" * 100, 20, 50).startswith("…") and len(mask("x" * 100, 20, 50)) <= 22


@pytest.mark.parametrize("text", [
    "", "   ", "\x00" * 5000, bytes(range(256)).decode("latin-1") * 40, "\ud800\udfff" * 100,
    "A" * 1_000_000, "差" * 1_000_000, "投诉" + "\x00" * 10_000, "😡" * 5000, "{phrase}" * 100,
    "close my account " * 50_000, "1" * 100_000, "\u202e\u200b" * 1000 + "销户",
])
def test_hostile_text_never_raises_and_stays_cheap(scorer: VoiceScorer, text: str) -> None:
    started = time.perf_counter()
    score = scorer.score(text)
    assert time.perf_counter() - started < 0.5
    if score is not None:
        assert len(score.phrase) <= VoiceParams().quote_chars + 2


@pytest.mark.parametrize("value", [None, 42, 3.5, ["text"], {"text": "x"}, b"close my account"])
def test_not_a_text_is_not_read(scorer: VoiceScorer, value: object) -> None:
    assert scorer.score(value) is None


def test_tone_escalates_on_a_sharp_fall_or_the_regulator_with_a_cooldown(scorer: VoiceScorer) -> None:
    params, state, day = VoiceParams(), VoiceState(), 86400.0
    polite, angry = scorer.score("Thanks for the help!"), scorer.score("Still waiting, unacceptable and useless.")
    regulator = scorer.score("I will complain to the regulator.")
    assert polite and angry and regulator
    assert state.observe(polite, 0.0, params) is None
    assert state.observe(polite, day, params) is None
    fell = state.observe(angry, 2 * day, params)
    assert fell is not None and fell[0] > fell[1]
    assert state.observe(angry, 3 * day, params) is None  # cooldown
    assert state.observe(regulator, 3 * day, params) is not None  # always news
    assert len(pickle.dumps(state)) < 200


def test_corpus_accuracy_floor() -> None:
    rows = list(read_corpus())
    languages = {language for language, *_ in rows}
    assert languages == {"en", "zh"} and all(sum(r[0] == lang for r in rows) >= 200 for lang in languages)
    figures = accuracy(rows)
    for language in languages:  # bench.voice measures 93 % / 99 % (README, "Customer voice")
        assert figures[language]["sentiment"] >= 0.88, figures
        assert figures[language]["intent"] >= 0.95, figures


def test_models_load_only_when_a_text_arrives() -> None:
    code = """
import sys
from engine.config import EngineConfig
from detectors.customer import ViewParams
from detectors.fraud import FraudParams
from detectors.profile import ProfileParams
from detectors.rules import RuleParams
from engine.shard import Shard, process_all
from schemas.events import parse_event
shard = Shard(EngineConfig(ProfileParams(), RuleParams(), FraudParams(), ViewParams(), clock=str))
process_all(shard, [parse_event(b'{"kind":"app","event_id":"a","customer_id":"c","ts":"2026-01-01T00:00:00Z",'
                                b'"action":"support_chat","properties":{"topic":"fees"}}')])
assert "vaderSentiment" not in sys.modules and "snownlp" not in sys.modules
process_all(shard, [parse_event(b'{"kind":"app","event_id":"b","customer_id":"c","ts":"2026-01-01T00:01:00Z",'
                                b'"action":"support_chat","properties":{"text":"close my account"}}')])
assert "vaderSentiment" in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# -- the engine ---------------------------------------------------------------------------

def _stream(texts: list[str]) -> list[bytes]:
    """A customer active every day for three weeks, then writing ``texts`` a day apart."""
    out = [b'{"kind":"profile","event_id":"p","customer_id":"c1","ts":"2026-01-01T00:00:00Z","rm_id":"rm7"}']
    for day in range(1, 22):
        out.append(orjson.dumps({"kind": "transaction", "event_id": f"t{day}", "customer_id": "c1",
                                 "ts": f"2026-01-{day:02d}T10:00:00Z", "amount": 80.0, "counterparty_id": "m1"}))
    for i, text in enumerate(texts):
        action = "complaint" if i == 0 else "support_chat"
        out.append(orjson.dumps({"kind": "app", "event_id": f"v{i}", "customer_id": "c1",
                                 "ts": f"2026-01-{22 + i:02d}T12:00:00Z", "action": action,
                                 "properties": {"text": text}}))
    return out


def _replay(raw: list[bytes], locale: str, voice: bool = True) -> list[Alert]:
    view = ViewParams(voice=VoiceParams(enabled=voice))
    shard = Shard(EngineConfig(ProfileParams(), RuleParams(), FraudParams(), view, clock=lambda t: "now",
                               locale=locale))
    return [r for r in process_all(shard, [parse_event(b) for b in raw]) if isinstance(r, Alert)]


EN_TEXTS = ["Thanks, all good.", "Still waiting for my refund, unacceptable.",
            "I'm closing my account 6222020212345678 and moving everything to another bank.",
            "If you ignore me again I will complain to the regulator."]
ZH_TEXTS = ["谢谢，没问题了。", "退款还没到账，太失望了。", "尾号1234的卡我要销户，钱全部转到别的银行。",
            "再不处理我就打12378投诉到金融监管总局。"]


@pytest.mark.parametrize(("texts", "locale", "quoted", "regulator_text"), [
    (EN_TEXTS, "en", 'customer wrote (', "threatens a complaint to the regulator"),
    (ZH_TEXTS, "zh-CN", "客户留言（", "提及向监管投诉"),
    (EN_TEXTS, "zh-CN", "客户留言（", "提及向监管投诉"),
])
def test_replay_raises_complaint_escalation_and_quoted_exit_signals(texts: list[str], locale: str, quoted: str,
                                                                    regulator_text: str) -> None:
    alerts = _replay(_stream(texts), locale)
    escalations = [a for a in alerts if a.type == "complaint_escalation"]
    assert escalations, [a.type for a in alerts]
    assert escalations[-1].severity == "high" and escalations[-1].rm_id == "rm7"
    assert any(regulator_text in r.text for r in escalations[-1].reasons)
    churn = [a for a in alerts if a.type == "churn_risk"]
    assert churn, [a.type for a in alerts]
    reasons = [r for a in churn for r in a.reasons]
    signals = {name for r in reasons if r.code == "churn_exit_signals" for name, _ in r.args["signals"]}
    assert signals & {"voice_exit_intent", "voice_negative", "voice_regulator"}
    quotes = [r.text for r in reasons if r.code == "churn_voice"]
    assert quotes and all(text.startswith(quoted) for text in quotes)
    assert not any(ch.isdigit() for r in reasons if r.code == "churn_voice" for ch in r.args["phrase"])
    # the same stream replays to the same alerts
    assert [a.to_bytes() for a in _replay(_stream(texts), locale)] == [a.to_bytes() for a in alerts]


def test_with_voice_off_texts_change_nothing() -> None:
    plain = _stream(["x"] * 4)
    alerts = _replay(_stream(EN_TEXTS), "en", voice=False)
    assert not any(a.type == "complaint_escalation" for a in alerts)
    assert [(a.type, a.score) for a in alerts] == [(a.type, a.score) for a in _replay(plain, "en", voice=False)]


def test_a_failing_text_is_that_events_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: VoiceScorer, text: object) -> None:
        raise RuntimeError("model failed")

    monkeypatch.setattr(VoiceScorer, "score", broken)
    view = ViewParams()
    shard = Shard(EngineConfig(ProfileParams(), RuleParams(), FraudParams(), view, clock=lambda t: "now"))
    records = process_all(shard, [parse_event(b) for b in _stream(["close my account"])])
    dead = [r for r in records if type(r).__name__ == "DeadLetter"]
    assert len(dead) == 1 and "model failed" in dead[0].reason


def test_every_exit_signal_has_a_weight_in_the_default_config() -> None:
    text = (ROOT / "config" / "default.toml").read_text()
    assert all(f"w_{name}" in text for name in SIGNALS if name.startswith("voice_"))


def test_simulated_texts_are_extra_events_labelled_and_churners_are_more_negative() -> None:
    from simulator import SimulatorConfig, generate

    config = SimulatorConfig(customers=1500, days=60, seed=3, churn_rate=0.05)
    plain = list(generate(SimulatorConfig(customers=1500, days=60, seed=3, churn_rate=0.05, voice_texts=False)))
    stream = list(generate(config))
    texts = [e for e in stream if e["event_id"].endswith("-v")]
    assert [e for e in stream if not e["event_id"].endswith("-v")] == plain
    assert texts and all(e["action"] == "support_chat" and e["properties"]["text"] for e in texts)
    labels = [e["properties"]["label"] for e in texts]
    assert {label["language"] for label in labels} == {"en", "zh"}
    churned = {e["customer_id"] for e in stream if e["kind"] == "feedback" and e.get("label") == "churned"}

    def negative_share(ids: set[str], inside: bool) -> float:
        chosen = [e for e in texts if (e["customer_id"] in ids) == inside]
        return sum(e["properties"]["label"]["sentiment"] == "negative" for e in chosen) / max(1, len(chosen))

    assert negative_share(churned, True) > 0.8 > 0.5 > negative_share(churned, False)


def test_churn_state_and_model_pickled_before_the_voice_signals_restore() -> None:
    from detectors.churn import DAY, ChurnModel, ChurnParams, ChurnState

    params, state = ChurnParams(), ChurnState()
    for day in range(0, 60, 2):
        state.observe_activity(day * DAY, 50.0, params)
    state.observe_signal("complaint", 60 * DAY, params)
    state.evidence(61 * DAY, params)
    old = {name: getattr(state, name) for name in ChurnState.__slots__ if name != "quote"}
    old["signals"] = old["signals"][:7]  # the seven signals before customer voice
    for evidence in old["history"]:
        evidence.signals = evidence.signals[:7]
    restored = ChurnState.__new__(ChurnState)
    restored.__setstate__((None, old))  # the default pickle of a slotted object, as it was
    assert len(restored.signals) == len(SIGNALS) and restored.quote is None
    assert 0.0 <= restored.score(70 * DAY, params) <= 1.0
    model = ChurnModel.__new__(ChurnModel)
    model.__setstate__(([0.0, 1.0, *[0.1] * 7], [1e-8] * 9, 30))
    model.learn(restored.history[0], True, params)
    assert len(model.weights) == 2 + len(SIGNALS) and model.weights[2] != 0.0
