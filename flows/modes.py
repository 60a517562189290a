"""The engine's run modes: which source and which sinks feed the one dataflow.

- ``run_demo``: a generated stream (``python run.py``: the built-in simulator's, which
  ``run.py`` builds), alerts printed to the console; given a loopback, the prompts also go
  back to the simulation, whose customers answer them (``simulator.loop``): the bandit
  learns in closed loop.
- ``run_replay``: a recorded JSONL file in event-time order, everything to JSONL files;
  the clock is the event-time clock, so results depend only on the input and the config.
- ``run_live``: Kafka topics in, Kafka ``alerts`` / ``dead_letter`` topics out (and the
  console or files if asked); with ``[redis] recent_events``, each customer's latest input
  events go to Redis too (the dashboard's timelines).

The live modes take an optional ``ops.Telemetry`` (``--metrics-port``): the dataflow then
observes itself, the sources report readiness and lag, and every sink is metered.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.inputs import Source
from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

from config.actions import load_actions
from config.settings import Settings
from detectors.fairness import DIMENSIONS
from detectors.nba import TRIGGERS
from engine.config import Clock, EngineConfig
from flows import collector
from flows.dataflow import Outputs, build_flow
from flows.outputs import as_output, as_single_writer
from flows.recovery import PATTERN as RECOVERY_PARTITIONS
from flows.recovery import prepare as prepare_recovery
from flows.sources import (
    EventsFrom,
    GeneratedSource,
    Group,
    KafkaSource,
    RedisStreamSource,
    ReplayInput,
    ReplaySource,
    consumer_name,
    load_replay,
)
from schemas.audit import AuditKeys
from schemas.outputs import format_ts
from schemas.redis_keys import RedisKeys
from sinks.audit import (
    FileAuditSink,
    FileHeadAnchor,
    RedisAuditSink,
    RedisHeadAnchor,
    file_anchor_key,
    redis_anchor_path,
)
from sinks.base import Sink
from sinks.console import ConsoleSink
from sinks.delivery import DeadLetterOut, JsonlDeadLetters, KafkaDeadLetters, RetryPolicy
from sinks.jsonl import JsonlSink
from sinks.kafka import KafkaSink, ResumableKafkaSink
from sinks.loopback import LoopbackSink, PromptAnswerer
from sinks.redis import RedisEventsSink, RedisLimits, RedisSink
from sinks.webhook import WebhookSink

if TYPE_CHECKING:
    from ops import Telemetry
    from ops.metrics import EngineMetrics, SinkMetrics


def wall_clock(_event_t: float) -> str:
    """``emitted_at`` in live modes: now."""
    return format_ts(time.time())


def event_clock(event_t: float) -> str:
    """``emitted_at`` in replay: the event time, so a replay never depends on when it ran."""
    return format_ts(event_t)


def engine_config(settings: Settings, clock: Clock, watermark: float | None = None,
                  emit_scores: bool = False) -> EngineConfig:
    """What the engine's per-event logic needs from the settings, clocked by ``clock``."""
    nba = settings.nba
    actions = load_actions(nba.catalogue or None) if nba.enabled else ()
    return EngineConfig(profile=settings.profile, rules=settings.rules, fraud=settings.fraud,
                        view=settings.view, clock=clock, watermark=watermark, emit_scores=emit_scores, nba=nba,
                        actions=actions, locale=settings.display.locale)


#: Live modes: how long a thread may hold the interpreter lock while another waits for it
#: (Python's default: 5 ms). The sinks deliver from their own threads, and the metrics
#: server answers from another; with the default, a record handed to a sink could wait up
#: to 5 ms behind the busy dataflow worker before its delivery starts.
LIVE_SWITCH_INTERVAL_S = 0.0005


def execute(flow: Dataflow, settings: Settings, workers: int | None = None, live: bool = False) -> None:
    """Run ``flow`` in this process (or as one process of a cluster) with recovery if set."""
    collector.start(live)
    if live:
        sys.setswitchinterval(LIVE_SWITCH_INTERVAL_S)
    engine = settings.engine
    recovery = None
    if engine.recovery_dir:
        db_dir = Path(engine.recovery_dir)
        # A cluster: one set of partitions, a worker's worth per worker, each process keeping
        # its share in its own directory (a volume per pod; flows/recovery.py).
        processes = len(engine.addresses) or 1
        prepare_recovery(db_dir, partitions=(workers or engine.workers) * processes if processes > 1 else 1,
                         process_id=engine.process_id if processes > 1 else 0, processes=processes)
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
    prompts: Path | None = None
    models: Path | None = None  # the fraud models' reports and champion changes


def _files(path: Path | None, name: str) -> dict[str, Any]:
    return {name: as_single_writer(lambda: JsonlSink(path))} if path is not None else {}


def replay_flow(settings: Settings, paths: ReplayPaths, replay: ReplayInput | None = None,
                metrics: EngineMetrics | None = None) -> Dataflow:
    """The dataflow of a replay (built after reading the input, which fixes the watermark);
    ``replay`` is the input already loaded, if it is; ``metrics`` (benchmarks) observes it."""
    replay = replay or load_replay(paths.input, settings.input)
    outputs = Outputs(alerts=_files(paths.alerts, "file"), scores=_files(paths.scores, "file"),
                      states=_files(paths.state, "file"),
                      dead_letters=_files(paths.dead_letters, "file"), prompts=_files(paths.prompts, "file"),
                      models=_files(paths.models, "file"),
                      audit={name: as_single_writer(factory) for name, factory in audit_sinks(settings).items()})
    config = engine_config(settings, event_clock, replay.watermark, emit_scores=paths.scores is not None)
    return build_flow(ReplaySource(replay), outputs, config, metrics=metrics,
                      snapshots=bool(settings.engine.recovery_dir))


def run_replay(settings: Settings, paths: ReplayPaths, workers: int | None = None) -> None:
    flow = replay_flow(settings, paths)
    # With recovery state on disk the run resumes, and each file sink truncates its file back
    # to its snapshot: the outputs hold what the run wrote so far and must not be emptied.
    recovery = settings.engine.recovery_dir
    resuming = bool(recovery) and any(Path(recovery).glob(RECOVERY_PARTITIONS))
    for path in (paths.alerts, paths.scores, paths.state, paths.dead_letters, paths.prompts, paths.models):
        if path is not None:  # every output asked for exists at the end, empty if nothing went there
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (resuming and path.exists()):
                path.write_bytes(b"")
    execute(flow, settings, workers)


def live_flow(settings: Settings, source: Source[Any], console: bool = True,
              kafka_out: bool = False, alerts_path: Path | None = None,
              dead_letter_path: Path | None = None, telemetry: Telemetry | None = None,
              loopback: PromptAnswerer | None = None, stop: threading.Event | None = None,
              redis_side: bool = True) -> Dataflow:
    """The dataflow of a live run: console and/or Kafka and/or JSONL outputs; with
    ``telemetry``, every sink is metered under its name and the dataflow observed; with
    ``loopback``, prompts also go to it (the simulation running in this process); with
    ``[redis] input_stream`` and ``redis_side``, events from that stream (the dashboard's
    feedback) join the source's until ``stop``."""
    def sink(name: str, factory: Callable[[], Sink]) -> Callable[[], Sink]:
        if telemetry is None:
            return factory
        telemetry.metrics.sink(name)  # exported at zero from the start
        return telemetry.metered(name, factory)

    def sink_metrics(name: str) -> SinkMetrics | None:
        return telemetry.metrics.sink(name) if telemetry is not None else None

    outputs = Outputs()
    if alerts_path is not None:
        alerts_file = alerts_path
        outputs.alerts["file"] = as_single_writer(sink("file_alerts", lambda: JsonlSink(alerts_file)))
    if dead_letter_path is not None:
        dead_file = dead_letter_path
        outputs.dead_letters["file"] = as_single_writer(sink("file_dead_letters", lambda: JsonlSink(dead_file)))
    if console:
        outputs.alerts["console"] = as_single_writer(sink("console", ConsoleSink))
        outputs.prompts["console"] = as_single_writer(sink("console_prompts", ConsoleSink))
    if kafka_out:
        k = settings.kafka
        client = k.producer_config()
        # What the broker refuses for good goes to the Kafka sinks' own dead-letter file.
        refused = k.sink_dead_letter_path
        # One writer that knows what it delivered since the last snapshot, so a restart
        # from a snapshot sends no alert id twice.
        outputs.alerts["kafka"] = as_single_writer(sink("kafka_alerts", lambda: ResumableKafkaSink(
            client, k.alerts_topic, JsonlDeadLetters(refused), metrics=sink_metrics("kafka_alerts"))))
        outputs.prompts["kafka"] = as_single_writer(sink("kafka_prompts", lambda: ResumableKafkaSink(
            client, k.prompts_topic, JsonlDeadLetters(refused), metrics=sink_metrics("kafka_prompts"))))
        outputs.dead_letters["kafka"] = as_output(sink("kafka_dead_letters", lambda: KafkaSink(
            client, k.dead_letter_topic, JsonlDeadLetters(refused), metrics=sink_metrics("kafka_dead_letters"))))
    for name, factory in delivery_sinks(settings).items():
        outputs.alerts[name] = as_single_writer(sink(name, factory))
    if loopback is not None:
        # One sink per worker: every worker of this process reaches the one simulation.
        target = loopback
        outputs.prompts["loopback"] = as_output(sink("loopback_prompts", lambda: LoopbackSink(target)))
    if settings.redis.enabled:  # prompts to each RM's stream (the webhook carries alerts only)
        outputs.prompts["redis"] = as_single_writer(sink("redis_prompts", delivery_sinks(settings)["redis"]))
        # The fraud models' reports and champion changes, for the risk dashboard.
        outputs.models["redis"] = as_single_writer(sink("redis_models", delivery_sinks(settings)["redis"]))
    if settings.redis.enabled and settings.redis.recent_events > 0:
        outputs.events["redis"] = as_single_writer(sink("redis_events", recent_events_sink(settings)))
    for name, factory in audit_sinks(settings).items():
        outputs.audit[name] = as_single_writer(sink(name, factory))
    config = engine_config(settings, wall_clock)
    if telemetry is not None:
        telemetry.metrics.expect_prompts((a.action_id for a in config.actions), TRIGGERS)
        fairness = config.nba.fairness
        if config.nba.enabled and fairness.enabled:
            telemetry.metrics.expect_fairness({d: fairness.values(d) for d in DIMENSIONS})
        if settings.engine.recovery_dir:
            telemetry.metrics.watch_recovery_store(Path(settings.engine.recovery_dir), RECOVERY_PARTITIONS)
    return build_flow(source, outputs, config,
                      metrics=telemetry.metrics if telemetry is not None else None,
                      side_input=redis_input(settings, stop, telemetry=telemetry) if redis_side else None,
                      snapshots=bool(settings.engine.recovery_dir))


#: How long the Redis source's read waits on the server when the stream has nothing new: an
#: entry is read as it arrives, and a stop request is seen within this (plus one batch).
REDIS_SOURCE_BLOCK_MS = 5


def redis_input(settings: Settings, stop: threading.Event | None, side: bool = True,
                telemetry: Telemetry | None = None) -> RedisStreamSource | None:
    """The Redis input stream of ``[redis] input_stream``, if one is configured: beside
    another source (``side``), or as the only one; as ``[redis] input_group`` if set."""
    r = settings.redis
    if not r.input_stream:
        return None
    group = Group(r.input_group, consumer_name(r.input_consumer, settings.engine.process_id)) if r.input_group else None
    return RedisStreamSource(r.endpoint(), RedisKeys(r.key_prefix).input_stream(r.input_stream), stop,
                             socket_timeout_s=r.socket_timeout_s, bounds=settings.input,
                             block_ms=0 if side else REDIS_SOURCE_BLOCK_MS, group=group, telemetry=telemetry)


def _dead_letters(settings: Settings, path: str, topic: str) -> DeadLetterOut:
    """A sink's dead letters: to ``topic`` if set (and to ``path`` what it refuses), else to ``path``."""
    if topic:
        return KafkaDeadLetters(settings.kafka.producer_config(), topic, JsonlDeadLetters(path))
    return JsonlDeadLetters(path)


def delivery_sinks(settings: Settings) -> dict[str, Callable[[], Sink]]:
    """Factories of the Redis and webhook alert sinks enabled in the settings (to be single
    writers: their resume state is the records they had not delivered yet)."""
    sinks: dict[str, Callable[[], Sink]] = {}
    r, w = settings.redis, settings.webhook
    sealer = settings.crypto.sealer() if r.enabled else None  # read once: a bad key file fails here
    if r.enabled:
        sinks["redis"] = lambda: RedisSink(
            r.endpoint(), _dead_letters(settings, r.dead_letter_path, r.dead_letter_topic), prefix=r.key_prefix,
            limits=RedisLimits(r.alerts_maxlen, r.prompts_maxlen, r.dedup_ttl_s),
            socket_timeout_s=r.socket_timeout_s, capacity=r.buffer_capacity,
            policy=RetryPolicy(budget_s=r.retry_budget_s), sealer=sealer)
    if w.enabled:
        sinks["webhook"] = lambda: WebhookSink(
            w.url, _dead_letters(settings, w.dead_letter_path, w.dead_letter_topic), fmt=w.format,
            timeout_s=w.timeout_s, capacity=w.buffer_capacity,
            policy=RetryPolicy(w.backoff_base_s, w.backoff_max_s, w.retry_budget_s),
            signing_secret=w.signing_secret.encode(), robot_secret=w.robot_secret,
            locale=settings.display.locale, zone=settings.display.zone)
    return sinks


def recent_events_sink(settings: Settings) -> Callable[[], Sink]:
    """The factory of the sink of ``[redis] recent_events``: each customer's latest input
    events for the dashboard (a single writer: one order per customer's list)."""
    r = settings.redis
    sealer = settings.crypto.sealer()
    return lambda: RedisEventsSink(
        r.endpoint(), _dead_letters(settings, r.dead_letter_path, r.dead_letter_topic), r.recent_events,
        prefix=r.key_prefix, socket_timeout_s=r.socket_timeout_s, capacity=r.buffer_capacity,
        policy=RetryPolicy(budget_s=r.retry_budget_s), sealer=sealer)


def audit_sinks(settings: Settings) -> dict[str, Callable[[], Sink]]:
    """Factories of the audit logs enabled in the settings (to be single writers, so the
    chain has one order), signing with the key file's active key (read here, once: a
    missing or malformed key file is an ``AuditKeyError`` before anything runs). With both
    a file and a Redis log, each anchors its signed head in the other store."""
    sinks: dict[str, Callable[[], Sink]] = {}
    a, r = settings.audit, settings.redis
    if not (a.file or a.redis):
        return sinks
    keys = AuditKeys.load(a.key_file)
    sealer = settings.crypto.sealer()
    redis_key = RedisKeys(r.key_prefix).audit_log(a.redis_key)
    both = bool(a.file and a.redis)
    if a.file:
        sinks["audit_file"] = lambda: FileAuditSink(
            a.file, keys, anchor=RedisHeadAnchor(r.endpoint(), file_anchor_key(redis_key), r.socket_timeout_s) if both
            else None, sealer=sealer)
    if a.redis:
        sinks["audit_redis"] = lambda: RedisAuditSink(
            r.endpoint(), redis_key, keys, _dead_letters(settings, r.dead_letter_path, r.dead_letter_topic),
            socket_timeout_s=r.socket_timeout_s, capacity=r.buffer_capacity,
            policy=RetryPolicy(budget_s=r.retry_budget_s),
            anchor=FileHeadAnchor(redis_anchor_path(a.file)) if both else None, sealer=sealer)
    return sinks


#: The source label (and partition) of the built-in simulator mode's generated stream.
DEMO_SOURCE = "simulator"


def demo_flow(settings: Settings, stop: threading.Event, events: EventsFrom, telemetry: Telemetry | None = None,
              loopback: PromptAnswerer | None = None, console: bool = True) -> Dataflow:
    """The built-in simulator mode's dataflow: ``events`` (the simulator's stream from any
    position) paced to ``[simulator] rate_per_s``; with ``loopback`` (when simulated customers
    answer prompts), the prompts also go to it."""
    source = GeneratedSource(DEMO_SOURCE, events, settings.simulator.rate_per_s, stop, telemetry, settings.input)
    return live_flow(settings, source, console=console, telemetry=telemetry, loopback=loopback, stop=stop)


def run_demo(settings: Settings, stop: threading.Event, events: EventsFrom, workers: int | None = None,
             telemetry: Telemetry | None = None, loopback: PromptAnswerer | None = None) -> None:
    execute(demo_flow(settings, stop, events, telemetry, loopback), settings, workers, live=True)


def run_live(settings: Settings, stop: threading.Event, console: bool, workers: int | None = None,
             alerts_path: Path | None = None, dead_letter_path: Path | None = None,
             telemetry: Telemetry | None = None) -> None:
    """Kafka topics in and out, or with ``[engine] source = "redis"`` the Redis input stream
    in and Redis streams out."""
    from_redis = settings.engine.source == "redis"
    source: Source[Any] | None = (redis_input(settings, stop, side=False, telemetry=telemetry) if from_redis else
                                  KafkaSource(settings.kafka, stop=stop, telemetry=telemetry, bounds=settings.input))
    assert source is not None  # the settings require [redis] input_stream for a Redis source
    if from_redis and dead_letter_path is None:  # no Kafka dead-letter topic: never drop them
        dead_letter_path = Path(settings.redis.input_dead_letter_path)
    flow = live_flow(settings, source, console=console, kafka_out=not from_redis, alerts_path=alerts_path,
                     dead_letter_path=dead_letter_path, telemetry=telemetry, stop=stop, redis_side=not from_redis)
    execute(flow, settings, workers, live=True)
