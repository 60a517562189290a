"""The imports run one way: entry points -> flows -> engine -> detectors -> schemas, with sinks,
ops and config beside them, and Bytewax only in ``flows/``.

Every module's imports are read with ``ast`` (those inside functions and ``TYPE_CHECKING``
blocks too: a wrong-way arrow is one whether it runs at import time or not) and checked
against the arrows allowed below. A new top-level package must be given its place here.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The packages each layer may import (besides itself). Entry points and tools (``run.py``,
#: ``bench/``, ``tests/``) may import any layer; no layer imports them.
ALLOWED: dict[str, frozenset[str]] = {
    "schemas": frozenset(),
    "detectors": frozenset({"schemas"}),
    "engine": frozenset({"detectors", "schemas"}),
    "sinks": frozenset({"schemas"}),
    "ops": frozenset({"schemas", "sinks"}),
    "config": frozenset({"detectors", "engine", "schemas"}),  # loaded by the entry point, handed down
    "flows": frozenset({"config", "detectors", "engine", "ops", "schemas", "sinks"}),
    "simulator": frozenset({"config", "schemas"}),
    # sinks: only sinks.redis_client, the one Redis client factory (plain, Cluster, Sentinel).
    "dashboard": frozenset({"config", "schemas", "sinks"}),
}
UNRESTRICTED = frozenset({"run", "bench", "tests"})
#: Third-party packages the plain-Python layers may use (and the standard library).
THIRD_PARTY: dict[str, frozenset[str]] = {
    # cryptography: the ciphers of the PII envelope (schemas.crypto) are part of its format.
    "schemas": frozenset({"cryptography", "orjson"}),
    # vaderSentiment: the English sentiment model of detectors.voice, imported when a text arrives
    "detectors": frozenset({"lightgbm", "numpy", "river", "scipy", "vaderSentiment"}),
    "engine": frozenset({"lightgbm", "numpy", "orjson", "river", "scipy"}),
}
#: Where the dataflow runtime may be imported: the wiring, and the tests that drive it.
BYTEWAX_ALLOWED = frozenset({"flows", "tests"})
OURS = frozenset(ALLOWED) | UNRESTRICTED


def modules() -> Iterator[tuple[str, Path]]:
    """(layer, path) of every Python module of the project."""
    yield "run", ROOT / "run.py"
    for layer in sorted(OURS - {"run"}):
        for path in sorted((ROOT / layer).rglob("*.py")):
            yield layer, path


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level package) of every import in ``path``; relative imports stay in the
    module's own package."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.partition(".")[0]


def wrong_way(layer: str, path: Path) -> list[str]:
    problems = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for line, top in imported(path):
        if top == "bytewax" and layer not in BYTEWAX_ALLOWED:
            problems.append(f"{where}:{line}: {layer} imports bytewax (only flows/ may)")
        if top in OURS and top != layer and layer not in UNRESTRICTED and top not in ALLOWED[layer]:
            problems.append(f"{where}:{line}: {layer} imports {top}")
        if layer in THIRD_PARTY and top not in OURS and top not in sys.stdlib_module_names \
                and top not in THIRD_PARTY[layer]:
            problems.append(f"{where}:{line}: {layer} imports {top} (allowed: the standard library, "
                            f"{', '.join(sorted(THIRD_PARTY[layer]))})")
    return problems


def test_every_top_level_package_has_its_place() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages <= OURS, f"give {sorted(packages - OURS)} a place in ALLOWED"


def test_imports_run_one_way() -> None:
    problems = [problem for layer, path in modules() for problem in wrong_way(layer, path)]
    assert not problems, "wrong-way imports:\n" + "\n".join(problems)


def test_the_check_sees_what_it_must(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nimport orjson\nif TYPE_CHECKING:\n"
                     "    from flows.items import Scored\n\ndef late() -> None:\n"
                     "    from bytewax.operators import StatefulBatchLogic\n    import redis.asyncio\n")
    assert len(wrong_way("ops", probe)) == 2  # flows, bytewax (ops may use any third-party client)
    assert len(wrong_way("detectors", probe)) == 5  # flows, bytewax (twice: a layer and a package), orjson, redis
    assert wrong_way("flows", probe) == []


@pytest.mark.parametrize("layer", ["schemas", "detectors", "engine", "sinks", "ops", "config", "simulator"])
def test_the_core_imports_without_bytewax(layer: str) -> None:
    names = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                   for p in (ROOT / layer).rglob("*.py") if p.name != "__main__.py")
    code = (f"import importlib, sys\nfor name in {names!r}:\n    importlib.import_module(name)\n"
            "assert 'bytewax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('bytewax'))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_sinks_report_through_their_own_protocol() -> None:
    from ops.metrics import SinkMetrics
    from sinks.base import SinkReport, Unreported

    methods = [name for name, _ in inspect.getmembers(SinkReport, inspect.isfunction) if not name.startswith("_")]
    assert set(methods) == {"written", "error", "retry", "buffer_depth", "buffer_capacity", "delivered", "lost"}
    for implementation in (SinkMetrics, Unreported):
        for name in methods:
            assert inspect.signature(getattr(implementation, name)) == inspect.signature(getattr(SinkReport, name)), \
                (implementation.__name__, name)
