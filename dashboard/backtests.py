"""The admin's rule back-test: ``run.py backtest`` on the configured recorded stream, in a
background process, one run at a time, its result kept in Redis.

The engine's logic runs in its own process (``flows.backtest`` over ``engine.shard``), never in
the dashboard's: a replay is seconds to minutes of CPU that would hold the web server's
interpreter lock. The process loads the configured config file (``[dashboard]
backtest_config``) with the dashboard's environment (its ``CRM__`` overrides), so its
"current" rules are the ones that file and those overrides give.

Keys (``schemas.redis_keys``): ``backtest:{id}`` (a hash: ``by``, ``changes``, ``status``
``running`` / ``done`` / ``failed``, ``started_at``, ``finished_at``, ``result`` or ``error``)
and ``backtests`` (run ids by start time).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import orjson

from schemas.outputs import format_ts
from schemas.redis_keys import RedisKeys

RUN_PY: Final = Path(__file__).resolve().parents[1] / "run.py"
CHANGE: Final = re.compile(r"^rules\.[a-z0-9_]{1,64}=[0-9A-Za-z.+-]{1,32}$")
KEEP: Final = 50  # runs listed


class Busy(Exception):
    """A back-test is already running."""


class Backtests:
    """Starts back-test processes and keeps their results; ``on_done(run)`` is awaited when
    one ends (the application audits it)."""

    def __init__(self, client: Any, keys: RedisKeys, input_path: str, config_path: str = "",
                 timeout_s: float = 1800.0, on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None
                 ) -> None:
        self.r, self.k = client, keys
        self.input_path, self.config_path, self.timeout_s = input_path, config_path, timeout_s
        self.on_done = on_done
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.input_path)

    def command(self, changes: list[str]) -> list[str]:
        cmd = [sys.executable, str(RUN_PY), "backtest", "--input", self.input_path, "--json", "--log-level", "ERROR"]
        if self.config_path:
            cmd += ["--config", self.config_path]
        for change in changes:
            cmd += ["--set", change]
        return cmd

    async def start(self, changes: list[str], by: str) -> dict[str, Any]:
        """Start a run (``Busy`` if one is running); the run as stored."""
        if self._task is not None and not self._task.done():
            raise Busy("a back-test is running")
        run_id = "bt-" + secrets.token_hex(6)
        run = {"id": run_id, "by": by, "changes": orjson.dumps(changes).decode(), "status": "running",
               "input": Path(self.input_path).name, "started_at": format_ts(time.time())}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k.backtest(run_id), mapping=run)
        pipe.zadd(self.k.backtests(), {run_id: int(time.time() * 1000)})
        await pipe.execute()
        self._task = asyncio.create_task(self._run(run_id, changes))
        return self._shown(run)

    async def _run(self, run_id: str, changes: list[str]) -> None:
        fields: dict[str, str]
        try:
            proc = await asyncio.create_subprocess_exec(*self.command(changes), stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, cwd=str(RUN_PY.parent))
            try:
                out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
            if proc.returncode == 0:
                fields = {"status": "done", "result": orjson.dumps(orjson.loads(out)).decode()}
            else:
                fields = {"status": "failed", "error": err.decode(errors="replace").strip()[-500:]}
        except TimeoutError:
            fields = {"status": "failed", "error": f"timed out after {self.timeout_s:g} s"}
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.r.hset(self.k.backtest(run_id), mapping={"status": "failed", "error": "cancelled"})
            raise
        except Exception as exc:  # the run failed; the dashboard goes on
            fields = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        fields["finished_at"] = format_ts(time.time())
        await self.r.hset(self.k.backtest(run_id), mapping=fields)
        if self.on_done is not None:
            await self.on_done(await self.get(run_id))

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @staticmethod
    def _shown(run: dict[str, str]) -> dict[str, Any]:
        shown: dict[str, Any] = dict(run)
        shown["changes"] = orjson.loads(run["changes"])
        if "result" in run:
            shown["result"] = orjson.loads(run["result"])
        return shown

    async def get(self, run_id: str) -> dict[str, Any]:
        data = await self.r.hgetall(self.k.backtest(run_id))
        return self._shown({k.decode(): v.decode() for k, v in data.items()}) if data else {}

    async def recent(self) -> list[dict[str, Any]]:
        ids = await self.r.zrevrange(self.k.backtests(), 0, KEEP - 1)
        pipe = self.r.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(self.k.backtest(run_id.decode()))
        return [self._shown({k.decode(): v.decode() for k, v in row.items()}) for row in await pipe.execute() if row]
