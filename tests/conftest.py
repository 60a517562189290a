"""Shared fixtures: simulated streams and an in-process replay runner."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from config.settings import Settings, load_settings
from flows.modes import ReplayPaths, run_replay
from schemas.audit import AuditKeys
from simulator import SimulatorConfig, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")


def audit_key_file(directory: Path, name: str = "audit-key.toml") -> Path:
    """A key file for the audit log in ``directory`` (made once, like `run.py audit keygen`)."""
    path = directory / name
    if not path.exists():
        path.write_text(AuditKeys.generate("k-test").to_text())
        path.chmod(0o600)
    return path


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
                        out_dir / "state.jsonl", out_dir / "dead.jsonl", out_dir / "prompts.jsonl")
    run_replay(settings or load_settings(), paths, workers)
    return ReplayResult(paths)


@pytest.fixture(scope="session")
def sim_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small labelled simulator stream (events, truth) with every typology in it."""
    out = tmp_path_factory.mktemp("sim")
    events, truth = out / "events.jsonl", out / "truth.jsonl"
    write_jsonl(SimulatorConfig(customers=250, days=21, seed=3, fraud_rate=0.25), events, truth)
    return events, truth


def malformed_line(rng: random.Random, good: list[bytes]) -> bytes:
    """One bad input line of a random sort, derived from a good one; never blank, no newline."""
    base = orjson.loads(rng.choice(good))
    sort = rng.randrange(8)
    if sort == 0:
        return b'{"kind": "transaction", "amount": '  # truncated JSON
    if sort == 1:
        base.pop(rng.choice(["event_id", "ts", "customer_id", "kind"]))
        return orjson.dumps(base)
    if sort == 2:
        base["customer_id"] = rng.choice([12, None, True, ["c"], ""])
        return orjson.dumps(base)
    if sort == 3:
        return orjson.dumps(base).replace(b'"ts":', b'"amount":NaN,"ts":', 1) if base["kind"] == "transaction" \
            else b'{"kind":"transaction","event_id":"x","ts":"2026-01-01T00:00:00Z","customer_id":"c","amount":NaN}'
    if sort == 4:
        base["ts"] = rng.choice(["2026-13-01T00:00:00Z", "yesterday", "2026-01-01T25:00:00Z", "2026-01-01"])
        return orjson.dumps(base)
    if sort == 5:
        base["kind"] = rng.choice(["trade", "TRANSACTION", "", "login"])
        return orjson.dumps(base)
    if sort == 6:
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        return b"\xff" + noise.replace(b"\n", b"").replace(b"\r", b"")
    return b"\xff\xfe" + orjson.dumps(base)  # not UTF-8


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright's bundled driver (no browser download)."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (make test-services installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()
