"""Recovery partitions on a volume per process (the StatefulSet's volumeClaimTemplates):
each process creates and keeps its share of one set of partitions, and a cluster whose
processes each see only their own directory runs, snapshots and resumes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from flows.recovery import prepare
from tests.brokers import free_port
from tests.conftest import ROOT, replay


def partitions(directory: Path) -> dict[int, int]:
    """{part_index: part_count} of the partitions in ``directory``."""
    found = {}
    for path in directory.glob("part-*.sqlite3"):
        with closing(sqlite3.connect(path)) as db:
            (index, count), = db.execute("SELECT part_index, part_count FROM parts").fetchall()
            found[index] = count
    return found


def test_each_process_keeps_its_share_of_one_set(tmp_path: Path) -> None:
    shares = [partitions(_prepared(tmp_path / f"p{i}", 6, i, 3)) for i in range(3)]
    assert [sorted(share) for share in shares] == [[0, 3], [1, 4], [2, 5]]
    assert {count for share in shares for count in share.values()} == {6}
    assert not [p for p in tmp_path.rglob(".init-*")]  # the scratch directory is gone
    # processes sharing one directory create the set between them, once
    shared = tmp_path / "shared"
    for i in range(3):
        prepare(shared, 6, i, 3)
    assert partitions(shared) == dict.fromkeys(range(6), 6)
    before = {p.name: p.stat().st_mtime_ns for p in shared.glob("part-*")}
    prepare(shared, 6, 1, 3)  # a restart creates nothing
    assert {p.name: p.stat().st_mtime_ns for p in shared.glob("part-*")} == before


def _prepared(directory: Path, count: int, process_id: int, processes: int) -> Path:
    prepare(directory, count, process_id, processes)
    return directory


def _cluster_replay(events: Path, out: Path, recovery: Path) -> None:
    addresses = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, "run.py", "replay", "--input", str(events), "--alerts-out", str(out / "alerts.jsonl")],
        cwd=ROOT, env={**os.environ, "CRM__ENGINE__ADDRESSES": addresses, "CRM__ENGINE__PROCESS_ID": str(i),
                       "CRM__ENGINE__RECOVERY_DIR": str(recovery / f"pod-{i}"),
                       "CRM__ENGINE__EPOCH_INTERVAL_S": "0.2"},
        stderr=subprocess.PIPE) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]


def test_two_processes_with_a_recovery_volume_each_run_and_resume(
        sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    single = replay(events, tmp_path / "single")
    out, recovery = tmp_path / "cluster", tmp_path / "volumes"
    _cluster_replay(events, out, recovery)
    assert partitions(recovery / "pod-0") == {0: 2} and partitions(recovery / "pod-1") == {1: 2}
    alerts = (out / "alerts.jsonl").read_bytes()
    assert sorted(alerts.splitlines()) == sorted(single.raw("alerts").splitlines())
    # a restart resumes from the snapshots spread over both volumes: the input was consumed,
    # so nothing is read or written again
    assert _executions(recovery) == [0]
    _cluster_replay(events, out, recovery)
    assert (out / "alerts.jsonl").read_bytes() == alerts
    assert _executions(recovery) == [0, 1]  # the second run is execution 1 of the same cluster


def _executions(recovery: Path) -> list[int]:
    numbers: set[int] = set()
    for path in recovery.glob("pod-*/part-*.sqlite3"):
        with closing(sqlite3.connect(path)) as db:
            numbers.update(row[0] for row in db.execute("SELECT ex_num FROM exs"))
    return sorted(numbers)
