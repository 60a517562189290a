"""Bytewax recovery partitions (``flows.recovery``): the resume epoch computed from them is
the one Bytewax resumes from, only snapshots a resume can never load are cleared, and a
replay killed again and again ends with exactly the uninterrupted results."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.recovery import clear_stale_snapshots, prepare, resume_epoch
from simulator import SimulatorConfig, write_jsonl
from tests.conftest import ROOT, replay

ITEMS = [*range(40), TestingSource.ABORT(), *range(40, 60)]


def _counting_flow(items: list[object], epochs: list[int], out: list[int]) -> Dataflow:
    """Sum per key of the items; the epochs in which items pass are recorded."""
    flow = Dataflow("counting")
    stream = op.input("in", flow, TestingSource(items))
    stream = op.inspect_debug("epochs", stream, lambda _step, _item, epoch, _worker: epochs.append(epoch))
    keyed = op.key_on("key", stream, lambda i: str(i % 3))
    sums = op.stateful_map("sum", keyed, lambda state, i: ((state or 0) + i,) * 2)
    op.output("out", op.map("value", sums, lambda kv: kv[1]), TestingSink(out))
    return flow


def _run(flow: Dataflow, db_dir: Path) -> None:
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(db_dir))


def test_resume_epoch_is_the_epoch_bytewax_resumes_from(tmp_path: Path) -> None:
    prepare(tmp_path)
    items = list(ITEMS)
    first: list[int] = []
    _run(_counting_flow(items, first, []), tmp_path)  # ends at the ABORT
    expected = resume_epoch(tmp_path)
    second: list[int] = []
    _run(_counting_flow(items, second, []), tmp_path)
    assert expected is not None and second and min(second) == expected


def test_only_snapshots_a_resume_cannot_load_are_cleared(tmp_path: Path) -> None:
    prepare(tmp_path)
    _run(_counting_flow(list(ITEMS), [], []), tmp_path)  # ends at the ABORT
    epoch = resume_epoch(tmp_path)
    assert epoch is not None and epoch > 1
    part = next(tmp_path.glob("part-*.sqlite3"))
    with closing(sqlite3.connect(part)) as db, db:
        before = db.execute("SELECT step_id, state_key, snap_epoch FROM snaps").fetchall()
        # What a crashed run leaves behind: snapshots at and after the resume epoch.
        db.executemany("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
                       [("counting.sum", "0", epoch, b""), ("counting.sum", "1", epoch + 5, b"")])
    assert all(e < epoch for _, _, e in before)
    assert clear_stale_snapshots(tmp_path) == 2
    with closing(sqlite3.connect(part)) as db:
        assert db.execute("SELECT step_id, state_key, snap_epoch FROM snaps").fetchall() == before


def test_a_directory_without_executions_is_left_alone(tmp_path: Path) -> None:
    prepare(tmp_path, partitions=2)
    assert len(list(tmp_path.glob("part-*.sqlite3"))) == 2
    assert resume_epoch(tmp_path) is None and clear_stale_snapshots(tmp_path) == 0


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.timeout(400)
def test_replay_killed_again_and_again_gives_the_uninterrupted_results(tmp_path: Path) -> None:
    """kill -9 a replay with recovery (epochs of 0.2 s) at five points spread over the
    stream, then let it finish: the alerts and scores files hold exactly the lines of one
    plain run, each once (their order within an epoch may differ)."""
    events = tmp_path / "events.jsonl"
    write_jsonl(SimulatorConfig(customers=600, days=40, seed=8, fraud_rate=0.2), events)
    plain = replay(events, tmp_path / "plain")
    out = tmp_path / "killed"
    command = [sys.executable, "run.py", "replay", "--input", str(events), "--alerts-out",
               str(out / "alerts.jsonl"), "--scores-out", str(out / "scores.jsonl")]
    env = {**os.environ, "CRM__ENGINE__RECOVERY_DIR": str(tmp_path / "recovery"),
           "CRM__ENGINE__EPOCH_INTERVAL_S": "0.2"}
    rng = random.Random(7)
    total = len(plain.records("scores"))
    targets = sorted(rng.sample(range(total // 10, total * 9 // 10), 5))
    with open(tmp_path / "engine.log", "ab") as log:
        for target in targets:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
            while _lines(out / "scores.jsonl") < target and proc.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert subprocess.run(command, cwd=ROOT, env=env, stderr=log, timeout=240).returncode == 0
    for name in ("alerts", "scores"):
        lines = (out / f"{name}.jsonl").read_bytes().splitlines()
        assert sorted(lines) == sorted(plain.raw(name).splitlines()), name
