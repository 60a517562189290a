"""Accuracy of the customer-voice scorer (``detectors.voice``) against labelled texts.

    python -m bench.voice [--corpus tests/data/voice] [--sim --customers 2000 --days 60]

The corpus is hand-labelled (``tests/data/voice/{en,zh}.jsonl``: ``text``, ``sentiment``
negative/neutral/positive, ``intent`` none/complaint/close_account/transfer_out/
regulator_complaint), written for this project. ``--sim`` adds the simulator's texts, whose
labels ride along in ``properties.label``. Reported per language: sentiment accuracy, intent
accuracy (the most serious intent found against the label) and the time per text.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from detectors.voice import VOICE_ACTIONS, VoiceParams, VoiceScorer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "voice"


def read_corpus(directory: Path = CORPUS) -> Iterator[tuple[str, str, str, str]]:
    """``(language, text, sentiment, intent)`` of every labelled line."""
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                row = orjson.loads(line)
                yield path.stem, row["text"], row["sentiment"], row["intent"]


def simulated(customers: int, days: float, seed: int = 7) -> Iterator[tuple[str, str, str, str]]:
    """The simulator's labelled texts."""
    from simulator import SimulatorConfig, generate

    for event in generate(SimulatorConfig(customers=customers, days=days, seed=seed)):
        properties = event.get("properties") or {}
        if event["kind"] == "app" and event["action"] in VOICE_ACTIONS and "text" in properties:
            label = properties["label"]
            yield label["language"], properties["text"], label["sentiment"], label["intent"]


def accuracy(rows: Iterable[tuple[str, str, str, str]], scorer: VoiceScorer | None = None
             ) -> dict[str, dict[str, float]]:
    """Per language: ``n``, ``sentiment`` and ``intent`` accuracy, ``ms`` per text."""
    scorer = scorer or VoiceScorer(VoiceParams())
    out: dict[str, dict[str, float]] = {}
    for language, text, sentiment, intent in rows:
        started = time.perf_counter()
        score = scorer.score(text)
        took = time.perf_counter() - started
        figures = out.setdefault(language, {"n": 0, "sentiment": 0.0, "intent": 0.0, "ms": 0.0})
        figures["n"] += 1
        figures["ms"] += took * 1000
        figures["sentiment"] += (score.label if score else "neutral") == sentiment
        figures["intent"] += (score.intent if score else "none") == intent
    for figures in out.values():
        n = figures["n"]
        figures["sentiment"] /= n
        figures["intent"] /= n
        figures["ms"] /= n
    return out


def _print(title: str, figures: dict[str, dict[str, float]]) -> None:
    print(title)
    print(f"  {'language':<9}{'texts':>6}{'sentiment':>11}{'intent':>9}{'ms/text':>9}")
    for language, f in sorted(figures.items()):
        print(f"  {language:<9}{f['n']:>6.0f}{f['sentiment']:>11.1%}{f['intent']:>9.1%}{f['ms']:>9.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--sim", action="store_true", help="also score the simulator's labelled texts")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--errors", action="store_true", help="print the corpus lines scored wrong")
    args = parser.parse_args(argv)
    scorer = VoiceScorer(VoiceParams())
    rows = list(read_corpus(args.corpus))
    scorer.score("warm up"), scorer.score("预热")  # the models load lazily: not timed per text
    where = args.corpus.relative_to(ROOT) if args.corpus.is_relative_to(ROOT) else args.corpus
    _print(f"hand-labelled corpus ({where})", accuracy(rows, scorer))
    if args.errors:
        for language, text, sentiment, intent in rows:
            score = scorer.score(text)
            got = (score.label, score.intent, score.sentiment) if score else ("neutral", "none", None)
            if got[:2] != (sentiment, intent):
                print(f"  {language} want {sentiment}/{intent} got {got}: {text}")
    if args.sim:
        _print(f"simulator ({args.customers} customers, {args.days:g} days)",
               accuracy(simulated(args.customers, args.days), scorer))


if __name__ == "__main__":
    main()
