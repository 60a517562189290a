"""Bytewax recovery partitions: create them, and clear what a crashed run left beyond its
resume point, so that a resume loads exactly the state of the epoch it resumes from.

Why the clearing is needed. Bytewax (0.21) keeps one row per (step, key, epoch) in each
partition's ``snaps`` table and, on resume, loads for every key its latest snapshot *before*
the resume epoch. The resume epoch is the cluster's last recorded frontier, which trails
what the workers had actually processed: a run killed with ``kill -9`` leaves snapshots at
epochs at and after the epoch the next run resumes from. The next run re-processes those
epochs, but epochs are cut by the wall clock, so its epoch ``e`` holds different events from
the crashed run's epoch ``e``; it overwrites the old rows only for the keys it touches in
exactly that epoch. The other rows stay, and the resume after a second crash can load one
of them: a customer's state from the first run's future, and the scores diverge from an
uninterrupted run. Deleting every snapshot at or after the resume epoch before the dataflow
starts removes only rows that this run can never load (it loads epochs strictly before) and
that it will write again for each key it touches.

The resume epoch is computed here exactly as Bytewax computes it: for the latest
execution, the minimum over its workers of the larger of the execution's resume epoch and
the worker's recorded frontier. This needs every partition of the cluster, so it runs only
where all of them are in this process's recovery directory (one process, or a shared
volume); otherwise it logs that it skipped the clearing.

A cluster of processes with a volume each. Bytewax needs the cluster as a whole to hold
every partition, each exactly once; no process needs any in particular. So the first start
of a cluster creates one set of ``partitions`` and each process keeps its share, the
partitions whose index is its process id modulo the number of processes (``prepare`` with
``process_id`` and ``processes``); its volume then holds them across restarts.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

from bytewax.recovery import init_db_dir

log = logging.getLogger(__name__)

PATTERN = "part-*.sqlite3"


def prepare(db_dir: Path, partitions: int = 1, process_id: int = 0, processes: int = 1) -> None:
    """Create this process's share of ``partitions`` empty recovery partitions in ``db_dir``
    if none of it is there (all of them for a single process); else clear the snapshots a
    crashed run left at or after the epoch the next run resumes from. Processes sharing one
    directory each create their own share, so together they create the set once."""
    share = range(process_id, partitions, processes)
    if not any((db_dir / f"part-{index}.sqlite3").exists() for index in share):
        db_dir.mkdir(parents=True, exist_ok=True)
        if processes == 1:
            init_db_dir(db_dir, partitions)
            return
        with tempfile.TemporaryDirectory(dir=db_dir, prefix=".init-") as tmp:
            init_db_dir(Path(tmp), partitions)
            for index in share:
                (Path(tmp) / f"part-{index}.sqlite3").rename(db_dir / f"part-{index}.sqlite3")
        return
    cleared = clear_stale_snapshots(db_dir)
    if cleared:
        log.info("recovery: cleared %d snapshots left after the resume epoch", cleared,
                 extra={"step": "recovery"})


def resume_epoch(db_dir: Path) -> int | None:
    """The epoch Bytewax will resume from, or None when it cannot be told from ``db_dir``
    alone (no execution recorded yet, or partitions of the cluster missing here)."""
    paths = sorted(db_dir.glob(PATTERN))
    executions: list[tuple[int, int, int]] = []
    frontiers: list[tuple[int, int, int]] = []
    part_counts: set[int] = set()
    part_indexes: set[int] = set()
    for path in paths:
        with closing(sqlite3.connect(path)) as db:
            for index, count in db.execute("SELECT part_index, part_count FROM parts"):
                part_indexes.add(index)
                part_counts.add(count)
            executions += db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs").fetchall()
            frontiers += db.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts").fetchall()
    if not executions or len(part_counts) != 1 or len(part_indexes) != part_counts.pop():
        return None
    latest, workers, resume = max(executions)
    progress = dict.fromkeys(range(workers), resume)
    for ex_num, worker, frontier in frontiers:
        if ex_num == latest:
            progress[worker] = max(progress.get(worker, frontier), frontier)
    return min(progress.values())


def clear_stale_snapshots(db_dir: Path) -> int:
    """Delete the snapshots at or after the resume epoch; the number deleted."""
    epoch = resume_epoch(db_dir)
    if epoch is None:
        if any(db_dir.glob(PATTERN)):
            log.warning("recovery: not every partition is in %s; stale snapshots are not cleared",
                        db_dir, extra={"step": "recovery"})
        return 0
    deleted = 0
    for path in sorted(db_dir.glob(PATTERN)):
        with closing(sqlite3.connect(path)) as db, db:
            deleted += db.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,)).rowcount
    return deleted
