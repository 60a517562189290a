"""Bytewax sources: a recorded JSONL file, a generated stream (the built-in simulator's),
Kafka topics and a Redis stream; one module each, the shared decoding in ``common``.

Every source decodes and validates in the partition that reads the message, and emits
either a ``Sequenced`` event or a ``DeadLetter`` carrying the raw payload, its origin and
the reason. Each source is a ``FixedPartitionedSource`` whose resume state is its position
(line, event count or offset) together with the partition's event sequence number, so a
run with recovery resumes exactly where its last snapshot was taken.

The live sources take a ``threading.Event``: once it is set (on SIGINT or SIGTERM, see
``run.py``) they end their partitions, so the dataflow drains what is in flight, sinks
flush and close, and the process exits normally.

Given a ``Telemetry`` (``ops``), the live sources report readiness (connected once their
partitions are built and polled) and the Kafka source the consumer lag of each partition.
"""

from flows.sources.common import SourceItem, decode, read_lines, refuse
from flows.sources.generated import EventsFrom, GeneratedPosition, GeneratedSource
from flows.sources.kafka import KafkaPosition, KafkaSource, consumer_config
from flows.sources.redis_stream import Group, RedisStreamSource, StreamPosition, consumer_name
from flows.sources.replay import ReplayInput, ReplaySource, load_replay

# The resume positions are also found where recovery snapshots taken before the sources
# became a package name them: here, and the generated stream's under its old name.
SimulatorPosition = GeneratedPosition

__all__ = [
    "EventsFrom",
    "GeneratedPosition",
    "GeneratedSource",
    "Group",
    "KafkaPosition",
    "KafkaSource",
    "RedisStreamSource",
    "ReplayInput",
    "ReplaySource",
    "SourceItem",
    "StreamPosition",
    "consumer_config",
    "consumer_name",
    "decode",
    "load_replay",
    "read_lines",
    "refuse",
]
