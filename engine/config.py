"""What the engine's per-event logic needs from the settings, and how a run is clocked.

``flows.modes.engine_config`` builds it from the validated settings (the engine never reads
the settings or the environment itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from detectors.customer import ViewParams
from detectors.fraud import FraudParams
from detectors.nba import Action, NBAParams
from detectors.profile import ProfileParams
from detectors.rules import RuleParams
from engine.isolation import Failures

Clock = Callable[[float], str]  # event time -> the "emitted_at" to stamp


@dataclass(frozen=True)
class EngineConfig:
    """Detector parameters, the clock that stamps ``emitted_at``, and the run's shape."""

    profile: ProfileParams
    rules: RuleParams
    fraud: FraudParams
    view: ViewParams
    clock: Clock
    watermark: float | None = None  # replay: the last event time; customer state is as of it
    emit_scores: bool = False
    nba: NBAParams = field(default_factory=lambda: NBAParams(enabled=False))
    actions: tuple[Action, ...] = ()  # the next-best-action catalogue
    failures: Failures = field(default_factory=Failures)  # per-event exceptions -> dead letters
    locale: str = "en"  # the language of alert and prompt reasons (schemas.texts)
