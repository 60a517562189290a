"""When the garbage collector runs: automatically in replay, at the sources' idle moments live.

Python's collector stops the interpreter to walk the young generation: every container
object made since the last collection that is still alive, and every object each of them
refers to. In this engine those referents are mostly old objects far apart in memory (a
profile's windows, the models' tables), so a collection costs about a millisecond per
thousand young objects, whatever it finds. Left to its thresholds it runs wherever an
allocation crosses them, usually in the middle of a batch:

- with ``GC_THRESHOLDS`` (50,000 young objects), every 20 s at 2,000 events/s, for 25-180 ms
  that grew with the engine's state (the simulator's stream through Redis);
- with a threshold of 5,000, 80 times a second for about 6 ms each: a batch's own short-lived
  objects (about 200 per event) are alive at the moment the count is crossed, so each
  collection walks them.

Live, a source calls ``idle()`` when a read found nothing: then no batch is in flight, the
batches' temporaries are gone, and the young generation holds only what the events kept (their
profiles' new window entries, pending labels: about one object an event). It is collected once it
holds ``LIVE_YOUNG`` objects, a pause of a millisecond or two that delays only an event arriving
during it. What survives is frozen (moved to the permanent generation, which no collection walks),
so no collection walks the whole state again. A frozen object is still freed when its last
reference goes; only a reference cycle that outlives a young collection stays, and the engine
makes few. The automatic collector stays on with ``GC_THRESHOLDS``, for a worker that is never
idle (a backlog) and for sources without idle moments.
"""

from __future__ import annotations

import gc

#: Garbage-collector thresholds for replay (Python's default: 700, 10, 10). The engine
#: allocates many short-lived objects per event and holds a large, long-lived heap (profiles,
#: windows, pending labels) with almost no reference cycles, so the default collects the
#: young generation every 700 allocations and rescans the whole heap far more often than it
#: finds anything. Measured with ``bench.bare_loop`` on the 205,668-event benchmark stream,
#: CPU time, alternating runs: 12.4-14.0 s with the defaults, 9.4-10.8 s with these.
GC_THRESHOLDS = (50_000, 20, 100)

#: Live: the young objects (net of those freed) at which an idle moment collects them.
LIVE_YOUNG = 2_000

_live = False


def start(live: bool = False) -> None:
    """Move what start-up built out of the collector's sight; then collect as above.

    Only the young generations are collected first: a replay's loaded stream is in the
    oldest already, and a full collection would walk every one of its events (1 % of a
    card replay's time) to find almost nothing."""
    global _live
    gc.collect(1)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _live = live


def idle() -> None:
    """A live source found nothing to read: collect the young generation if it is due."""
    if _live and gc.get_count()[0] >= LIVE_YOUNG:
        gc.collect(0)
        gc.freeze()
