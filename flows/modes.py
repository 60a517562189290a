"""The engine's run modes: which source and which sinks feed the one dataflow.

- ``run_demo``: the built-in simulator, alerts printed to the console (``python run.py``).
- ``run_replay``: a recorded JSONL file in event-time order, everything to JSONL files;
  the clock is the event-time clock, so results depend only on the input and the config.
- ``run_live``: Kafka topics in, Kafka ``alerts`` / ``dead_letter`` topics out (and the
  console or files if asked).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.inputs import Source
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from config.settings import Settings
from flows.dataflow import Outputs, build_flow
from flows.sources import KafkaSource, ReplayInput, ReplaySource, SimulatorSource, load_replay
from flows.steps import Clock, StepConfig
from schemas.outputs import format_ts
from sinks.base import as_output, as_single_writer
from sinks.console import ConsoleSink
from sinks.jsonl import JsonlSink
from sinks.kafka import KafkaSink


def wall_clock(_event_t: float) -> str:
    """``emitted_at`` in live modes: now."""
    return format_ts(time.time())


def event_clock(event_t: float) -> str:
    """``emitted_at`` in replay: the event time, so a replay never depends on when it ran."""
    return format_ts(event_t)


def step_config(settings: Settings, clock: Clock, watermark: float | None = None,
                emit_scores: bool = False) -> StepConfig:
    return StepConfig(profile=settings.profile, rules=settings.rules, fraud=settings.fraud,
                      view=settings.view, clock=clock, snapshots=bool(settings.engine.recovery_dir),
                      watermark=watermark, emit_scores=emit_scores)


def execute(flow: Dataflow, settings: Settings, workers: int | None = None) -> None:
    """Run ``flow`` in this process (or as one process of a cluster) with recovery if set."""
    engine = settings.engine
    recovery = None
    if engine.recovery_dir:
        db_dir = Path(engine.recovery_dir)
        if not any(db_dir.glob("part-*.sqlite3")):
            db_dir.mkdir(parents=True, exist_ok=True)
            init_db_dir(db_dir, 1)
        recovery = RecoveryConfig(db_dir, timedelta(seconds=engine.backup_interval_s))
    try:
        cli_main(flow, workers_per_process=workers or engine.workers,
                 process_id=engine.process_id if engine.addresses else None,
                 addresses=list(engine.addresses) or None,
                 epoch_interval=timedelta(seconds=engine.epoch_interval_s), recovery_config=recovery)
    except BytewaxRuntimeError as exc:
        # Bytewax turns a signal into a runtime error; it is a stop request, not a failure.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise


@dataclass(frozen=True)
class ReplayPaths:
    """Where a replay reads and writes."""

    input: Path
    alerts: Path | None = None
    scores: Path | None = None
    state: Path | None = None
    dead_letters: Path | None = None


def _files(path: Path | None, name: str) -> dict[str, Any]:
    return {name: as_single_writer(lambda: JsonlSink(path))} if path is not None else {}


def replay_flow(settings: Settings, paths: ReplayPaths, replay: ReplayInput | None = None) -> Dataflow:
    """The dataflow of a replay (built after reading the input, which fixes the watermark);
    ``replay`` is the input already loaded, if it is."""
    replay = replay or load_replay(paths.input)
    outputs = Outputs(alerts=_files(paths.alerts, "file"), scores=_files(paths.scores, "file"),
                      states=_files(paths.state, "file"),
                      dead_letters=_files(paths.dead_letters, "file"))
    config = step_config(settings, event_clock, replay.watermark, emit_scores=paths.scores is not None)
    return build_flow(ReplaySource(replay), outputs, config)


def run_replay(settings: Settings, paths: ReplayPaths, workers: int | None = None) -> None:
    execute(replay_flow(settings, paths), settings, workers)


def live_flow(settings: Settings, source: Source[Any], console: bool = True,
              kafka_out: bool = False, alerts_path: Path | None = None,
              dead_letter_path: Path | None = None) -> Dataflow:
    """The dataflow of a live run: console and/or Kafka and/or JSONL outputs."""
    outputs = Outputs(alerts=_files(alerts_path, "file"), dead_letters=_files(dead_letter_path, "file"))
    if console:
        outputs.alerts["console"] = as_single_writer(ConsoleSink)
    if kafka_out:
        k = settings.kafka
        client = k.client_config()
        outputs.alerts["kafka"] = as_output(lambda: KafkaSink(client, k.alerts_topic))
        outputs.dead_letters["kafka"] = as_output(lambda: KafkaSink(client, k.dead_letter_topic))
    return build_flow(source, outputs, step_config(settings, wall_clock))


def run_demo(settings: Settings, stop: threading.Event, workers: int | None = None) -> None:
    execute(live_flow(settings, SimulatorSource(settings.simulator, stop)), settings, workers)


def run_live(settings: Settings, stop: threading.Event, console: bool, workers: int | None = None,
             alerts_path: Path | None = None, dead_letter_path: Path | None = None) -> None:
    flow = live_flow(settings, KafkaSource(settings.kafka, stop=stop), console=console, kafka_out=True,
                     alerts_path=alerts_path, dead_letter_path=dead_letter_path)
    execute(flow, settings, workers)
