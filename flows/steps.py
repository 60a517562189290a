"""The Bytewax adapter of the engine's per-event logic: one stateful step, keyed by shard.

``EngineStep`` hands each batch of a shard's events to ``engine.shard.Shard`` and returns the
records it gives; at the end of a replay it returns every customer's final state. Nothing
else is decided here.

Snapshots. Bytewax asks every key touched in an epoch for a snapshot at the end of the
epoch, with or without recovery. Without recovery nothing ever reads one, so none is made.
With recovery the shard is pickled (cheaper than ``copy.deepcopy``, and immutable by
construction); with an observer, the time that takes and the snapshot's size are reported
(``Observer.snapshot_taken``).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable

from bytewax.operators import StatefulBatchLogic

from engine.config import EngineConfig
from engine.shard import Observer, Record, Shard
from flows.items import Sequenced

_RETAIN = StatefulBatchLogic.RETAIN


class EngineStep(StatefulBatchLogic[Sequenced, Record, bytes | None]):
    """One shard of the engine (see ``engine.shard``)."""

    def __init__(self, config: EngineConfig, resume: bytes | None, snapshots: bool,
                 observer: Observer | None = None) -> None:
        if resume is not None:
            self.shard: Shard = pickle.loads(resume)
            self.shard.configure(config)
        else:
            self.shard = Shard(config)
        self._snapshots = snapshots
        self._observer = observer
        self._watermark = config.watermark

    def on_batch(self, values: list[Sequenced]) -> tuple[Iterable[Record], bool]:
        events = [item.event for item in values]
        if self._observer is None:
            return self.shard.process(events), _RETAIN
        return self.shard.process(events, [item.source_time for item in values],
                                  [item.read_at for item in values], self._observer), _RETAIN

    def on_eof(self) -> tuple[Iterable[Record], bool]:
        """At the end of a replay: every customer's state as of the stream's last event time."""
        if self._watermark is None:
            return (), _RETAIN
        return self.shard.finish(self._watermark), _RETAIN

    def snapshot(self) -> bytes | None:
        if not self._snapshots:
            return None
        started = time.perf_counter()
        state = pickle.dumps(self.shard, protocol=pickle.HIGHEST_PROTOCOL)
        if self._observer is not None:
            self._observer.snapshot_taken(time.perf_counter() - started, len(state))
        return state
