"""The reference: the engine's exact per-event logic in a bare Python loop.

No Bytewax, no Kafka, no exchange between workers: the loaded stream goes through the same
``engine.shard.Shard`` the dataflow's one step hands its batches to, in batches of the size
the replay source emits, and every output record is serialised as a sink would. The
engine's throughput is quoted against this loop.
"""

from __future__ import annotations

from config.settings import Settings
from engine.shard import Shard
from flows.modes import engine_config, event_clock
from flows.sources import ReplayInput, ReplaySource


def run_bare(settings: Settings, replay: ReplayInput, emit_scores: bool = True,
             batch_size: int = ReplaySource.BATCH_SIZE) -> dict[str, int]:
    """Process ``replay`` in one loop; return the number of records of each output kind."""
    shard = Shard(engine_config(settings, event_clock, replay.watermark, emit_scores=emit_scores))
    counts = {"dead_letters": len(replay.dead_letters), "alerts": 0, "scores": 0, "states": 0, "bytes": 0}
    size = sum(len(d.to_bytes()) for d in replay.dead_letters)
    events = replay.events
    for start in range(0, len(events), batch_size):
        for record in shard.process(events[start:start + batch_size]):
            size += len(record.to_bytes())
            counts["alerts" if hasattr(record, "alert_id") else "scores"] += 1
    if replay.watermark is not None:
        for record in shard.finish(replay.watermark):
            size += len(record.to_bytes())
            counts["states"] += 1
    counts["bytes"] = size
    return counts
