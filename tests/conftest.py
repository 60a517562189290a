"""Shared fixtures: simulated streams and an in-process replay runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from config.settings import Settings, load_settings
from flows.modes import ReplayPaths, run_replay
from simulator import SimulatorConfig, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ReplayResult:
    """The four outputs of one replay, as bytes and as parsed records."""

    paths: ReplayPaths

    def raw(self, name: str) -> bytes:
        path = getattr(self.paths, name)
        return path.read_bytes() if path is not None and path.exists() else b""

    def records(self, name: str) -> list[dict]:
        return [orjson.loads(line) for line in self.raw(name).splitlines()]


def replay(input_path: Path, out_dir: Path, settings: Settings | None = None,
           workers: int = 1) -> ReplayResult:
    """Run the engine's replay in this process and return its outputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = ReplayPaths(input_path, out_dir / "alerts.jsonl", out_dir / "scores.jsonl",
                        out_dir / "state.jsonl", out_dir / "dead.jsonl")
    run_replay(settings or load_settings(), paths, workers)
    return ReplayResult(paths)


@pytest.fixture(scope="session")
def sim_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small labelled simulator stream (events, truth) with every typology in it."""
    out = tmp_path_factory.mktemp("sim")
    events, truth = out / "events.jsonl", out / "truth.jsonl"
    write_jsonl(SimulatorConfig(customers=250, days=21, seed=3, fraud_rate=0.25), events, truth)
    return events, truth
