"""Next-best-action prompts from the whole engine: a replay of the simulator stream emits
prompts that obey the contact rules against the customers' own profiles, deterministically,
and the Redis sink puts each in its RM's stream."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import redis

from config.actions import load_actions
from schemas.events import parse_timestamp
from schemas.outputs import Prompt, Reason
from schemas.redis_keys import RedisKeys
from sinks.delivery import JsonlDeadLetters
from sinks.redis import RedisSink
from tests.conftest import replay
from tests.services import redis_server, wait_until


def test_replayed_prompts_obey_the_contact_rules(sim_stream: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim_stream
    prompts = replay(events, tmp_path / "a").records("prompts")
    assert len(prompts) > 50
    assert replay(events, tmp_path / "b").records("prompts") == prompts  # deterministic
    profiles: dict[str, dict] = {}
    for line in events.read_bytes().splitlines():
        event = orjson.loads(line)
        if event["kind"] == "profile":
            profiles[event["customer_id"]] = event  # the simulator sends each profile first
    risk = {a.action_id: a.risk for a in load_actions()}
    sent: dict[str, list[float]] = defaultdict(list)
    for prompt in prompts:
        profile = profiles[prompt["customer_id"]]
        assert not profile.get("marketing_opt_out"), prompt
        assert risk[prompt["action"]] <= profile["risk_level"], prompt
        assert prompt["rm_id"] == profile["rm_id"]
        sent[prompt["customer_id"]].append(parse_timestamp(prompt["event_ts"]))
    for times in sent.values():
        times.sort()
        assert all(later - earlier >= 7 * 86400 for earlier, later in zip(times, times[2:], strict=False))
    assert len({p["action"] for p in prompts}) > 3  # the bandit explores


def test_prompts_reach_their_rms_streams_in_redis(tmp_path: Path) -> None:
    prompts = [Prompt(f"nb-{i}", f"c{i}", f"rm{i % 2}", "rm_call", None, 0.5,
                      (Reason("trigger_large_credit", "large credit", None, 1.0),),
                      "2026-01-05T12:00:00.000Z", "nba-linucb-1", "large_credit", f"e{i}",
                      "2026-01-05T10:00:00.000Z") for i in range(6)]
    with redis_server(tmp_path) as server:
        sink = RedisSink(server.url, JsonlDeadLetters(tmp_path / "dead.jsonl"), prefix="p:")
        sink.open()
        sink.write_batch(prompts + prompts[:2])  # a replay after a restart repeats some
        assert wait_until(lambda: sink.buffer_depth == 0, 20)
        sink.close()
        client = redis.Redis.from_url(server.url)
        for rm in ("rm0", "rm1"):
            ids = [fields[b"id"].decode() for _, fields in client.xrange(RedisKeys("p:").rm_prompts(rm))]
            assert ids == [p.prompt_id for p in prompts if p.rm_id == rm]
