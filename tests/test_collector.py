"""When the garbage collector runs (``flows.collector``): live, a source's idle moment
collects the young generation once it is due and freezes what survives; in replay nothing
changes hands. The process's collector state is restored after each test."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from flows import collector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    collector._live = False
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.enable()


def cycle() -> weakref.ref[Node]:
    """A reference cycle nothing else holds: only a collection frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_live_an_idle_moment_collects_the_young_and_freezes_the_survivors() -> None:
    collector.start(live=True)
    frozen = gc.get_freeze_count()
    kept = [Node() for _ in range(collector.LIVE_YOUNG)]  # what the events keep
    garbage = cycle()
    assert gc.get_count()[0] >= collector.LIVE_YOUNG and garbage() is not None
    collector.idle()
    assert garbage() is None  # the cycle made since the last collection is freed
    assert gc.get_freeze_count() >= frozen + len(kept)  # the survivors are out of every later walk
    assert gc.get_count()[0] < collector.LIVE_YOUNG


def test_live_an_idle_moment_before_it_is_due_does_nothing() -> None:
    collector.start(live=True)
    frozen = gc.get_freeze_count()
    garbage = cycle()
    assert gc.get_count()[0] < collector.LIVE_YOUNG
    collector.idle()
    assert garbage() is not None and gc.get_freeze_count() == frozen


def test_in_replay_an_idle_call_leaves_the_collector_to_its_thresholds() -> None:
    collector.start(live=False)
    assert gc.get_threshold() == collector.GC_THRESHOLDS and gc.isenabled()
    frozen = gc.get_freeze_count()
    kept = [Node() for _ in range(collector.LIVE_YOUNG)]
    garbage = cycle()
    collector.idle()
    assert garbage() is not None and gc.get_freeze_count() == frozen and kept
