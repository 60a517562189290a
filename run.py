"""Command line of the real-time CRM event-processing and alerting engine.

    python run.py                      the built-in simulator, alerts on the console
    python run.py replay --input ...   a recorded stream through the exact live logic
    python run.py live                 Kafka topics in, Kafka alerts out
    python run.py simulate --out ...   write a labelled simulated stream
    python run.py evaluate             simulate, replay, and report detection quality
    python run.py evaluate --nba       next-best action in closed loop against baselines
    python run.py produce              send the simulator's stream to the Kafka input topics
    python run.py backtest --input F --set rules.KEY=VALUE   a rule change replayed next to the current rules
    python run.py audit verify ...     check an audit log's signed chain and head
    python run.py audit keygen ...     create (or rotate) the audit log's HMAC key file
    python run.py keys keygen|rotate   keys of the encryption of personal data at rest
    python run.py snooze ...           suppress a customer's alerts of a type until a time
    python run.py dashboard            the risk dashboard and RM workspace (web, over Redis)
    python run.py dashboard add-user   add a dashboard user (scrypt-hashed password)
    python run.py dashboard disable-user   disable a dashboard user, ending their sessions
    python run.py dashboard unlock     lift the lock of a username after failed sign-ins
    python run.py alert-bridge         Alertmanager's notifications to a WeCom/DingTalk/Feishu robot

Live modes take ``--metrics-port PORT``: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``.

Configuration: ``--config FILE`` (default ``config/default.toml``), then environment
variables ``CRM__<SECTION>__<KEY>``; see the README.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

# numpy's BLAS would start a thread per core for its matrix products, which here are small
# (a tick's transactions by the model's features): the threads only spin on the core the
# sinks, the metrics server and the challenger's training need. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from config.settings import ConfigError, Settings, load_settings
from schemas.redis_keys import RedisKeys
from schemas.redis_url import RedisEndpoint

if TYPE_CHECKING:
    from ops import Telemetry
    from ops.health import OpsServer
    from schemas.audit import AuditKeys
    from schemas.crypto import PiiKeys
    from simulator.loop import Loopback

T = TypeVar("T")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _common(parser: argparse.ArgumentParser, sub: bool = True) -> None:
    # Given before or after the subcommand, alike: a subcommand's defaults are suppressed so
    # that they do not overwrite what was given before it (the top level holds the defaults).
    def default(value: object) -> object:
        return argparse.SUPPRESS if sub else value

    parser.add_argument("--config", type=Path, default=default(None),
                        help="TOML configuration file (default: config/default.toml)")
    parser.add_argument("--workers", type=int, default=default(None),
                        help="Bytewax workers in this process (default: [engine] workers)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=default("INFO"),
                        help="DEBUG, INFO, WARNING or ERROR (default: INFO)")


def _ops(parser: argparse.ArgumentParser, log_default: str, sub: bool = False) -> None:
    # A subcommand's defaults would overwrite the same options given before it: suppressed.
    def default(value: str | None) -> str | None:
        return argparse.SUPPRESS if sub else value

    parser.add_argument("--metrics-port", type=int, default=default(None),
                        help="serve Prometheus /metrics, /healthz and /readyz on this port")
    parser.add_argument("--metrics-host", default=default("127.0.0.1"),
                        help="address to serve them on (0.0.0.0 in a container; default 127.0.0.1)")
    parser.add_argument("--bytewax-api-port", type=int, default=default(None),
                        help="with --metrics-port: start Bytewax's own dataflow API on this port and merge its "
                        "bytewax_* metrics into /metrics (Bytewax listens on every interface, without "
                        "authentication: keep the port closed to the network)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default(None),
                        help=f"log lines as text or one JSON object each (default: {log_default})")


class _Version(argparse.Action):
    """``--version``: the project's version, read only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from ops.metrics import project_version

        print(f"{parser.prog} {project_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version)
    _common(parser, sub=False)
    _ops(parser, "text")
    sub = parser.add_subparsers(dest="command")

    replay = sub.add_parser("replay", help="process a recorded JSONL stream in event-time order",
                            description="Process a recorded stream (JSONL, optionally .gz) in event-time "
                            "order exactly as live processing would, and exit 0 when it is consumed.")
    _common(replay)
    replay.add_argument("--input", type=Path, required=True, help="events, one JSON object per line")
    replay.add_argument("--alerts-out", type=Path, help="alerts JSONL")
    replay.add_argument("--scores-out", type=Path, help="per-transaction scores JSONL")
    replay.add_argument("--prompts-out", type=Path, help="next-best-action prompts JSONL")
    replay.add_argument("--state-out", type=Path, help="customer state JSONL, as of the last event time")
    replay.add_argument("--dead-letter-out", type=Path, help="rejected input with reasons JSONL")
    replay.add_argument("--models-out", type=Path,
                        help="fraud model reports (prequential AUC/AP, champion) and champion changes JSONL")

    live = sub.add_parser("live", help="consume the Kafka topics and produce alerts to Kafka",
                          description="Consume the configured Kafka topics ([kafka] in the config) "
                          "and produce alerts and dead letters to their topics.")
    _common(live)
    _ops(live, "json", sub=True)
    live.add_argument("--bootstrap-servers", help="override [kafka] bootstrap_servers")
    live.add_argument("--quiet", action="store_true", help="do not print alerts to the console")
    live.add_argument("--alerts-out", type=Path, help="also write alerts to this JSONL file")
    live.add_argument("--dead-letter-out", type=Path, help="also write dead letters to this JSONL file")

    simulate = sub.add_parser("simulate", help="write a labelled simulated event stream",
                              description="Generate a deterministic simulated stream with injected "
                              "fraud and AML typologies, delayed feedback and ground truth.")
    simulate.add_argument("--customers", type=int, default=1000)
    simulate.add_argument("--days", type=float, default=30.0)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--fraud-rate", type=float, default=0.03,
                          help="share of customers hit by an injected typology")
    simulate.add_argument("--out", type=Path, required=True, help="events JSONL (.gz to compress)")
    simulate.add_argument("--truth-out", type=Path, help="ground truth per transaction JSONL")
    simulate.add_argument("--voice-texts", action=argparse.BooleanOptionalAction, default=True,
                          help="chat texts (English and Chinese, labelled in properties.label) after "
                          "complaints, support chats and a few logins: extra events only (default: on)")

    evaluate = sub.add_parser("evaluate", help="simulate, replay and report detection quality",
                              description="Generate a labelled stream, replay it through the engine "
                              "and print precision, recall, ROC AUC, average precision and detection "
                              "delay per typology and overall, and churn quality. With --nba instead: "
                              "run the engine in closed loop with simulated customers who answer its "
                              "next-best-action prompts, for the bandit, a random eligible policy and "
                              "every fixed action, and print conversion rates and contact-rule violations "
                              "(bench/nba_loop.py).")
    _common(evaluate)
    evaluate.add_argument("--nba", action="store_true",
                          help="evaluate next-best action in closed loop instead of detection")
    evaluate.add_argument("--customers", type=int, default=None, help="default 2000 (--nba: 500)")
    evaluate.add_argument("--days", type=float, default=None, help="default 60 (--nba: 150)")
    evaluate.add_argument("--seed", type=int, default=None, help="default 11 (--nba: 7)")
    evaluate.add_argument("--fraud-rate", type=float, default=0.05, help="detection only")
    evaluate.add_argument("--workdir", type=Path, default=None, help="keep the files here (detection only)")
    evaluate.add_argument("--jobs", type=int, default=1, help="--nba: policies run at a time, in processes")
    evaluate.add_argument("--learned-from-day", type=float, default=60.0,
                          help="--nba: prompts from this day on count as after learning (default 60)")

    backtest = sub.add_parser(
        "backtest", help="replay a recorded stream with a changed rule threshold, next to the current one",
        description="Replay a recorded stream (JSONL, like replay --input) through the engine twice, with the "
        "current settings and with the --set changes made, and print for each the fraud alerts it raises "
        "(alert groups and revisions) and their precision and recall against the stream's own fraud/legit "
        "feedback labels (flows/backtest.py).")
    _common(backtest)
    backtest.add_argument("--input", type=Path, required=True, help="events, one JSON object per line")
    backtest.add_argument("--set", dest="changes", action="append", required=True, metavar="rules.KEY=VALUE",
                          help="a changed rule threshold (any key of [rules]); repeat for several")
    backtest.add_argument("--json", action="store_true", help="print the result as JSON")

    produce = sub.add_parser("produce", help="send the simulator's stream to the Kafka input topics",
                             description="Generate the simulator's stream and produce each event to "
                             "the input topic of its kind ([kafka] in the config), keyed by customer, "
                             "at a fixed rate: a load generator for live runs and the deploy stack.")
    _common(produce)
    produce.add_argument("--bootstrap-servers", help="override [kafka] bootstrap_servers")
    produce.add_argument("--rate", type=float, default=200.0, help="events per second (0: as fast as possible)")
    produce.add_argument("--max-events", type=int, default=None, help="stop after this many events")
    produce.add_argument("--customers", type=int, default=None, help="default: [simulator] customers")
    produce.add_argument("--seed", type=int, default=None, help="default: [simulator] seed")
    produce.add_argument("--create-topics", type=int, default=0, metavar="PARTITIONS",
                         help="first create the missing input and output topics with this many partitions")

    dash = sub.add_parser(
        "dashboard", help="the risk dashboard and RM workspace (web)",
        description="Serve the dashboard over the engine's Redis outputs ([redis] url, key_prefix) on "
        "[dashboard] host:port; users come from [dashboard] users_file. `add-user` adds or replaces a user "
        "(the password is read from the terminal, or from stdin with --password-stdin; replacing a user signs "
        "their sessions out); `disable-user` disables one; `unlock` lifts the lock of a username after failed "
        "sign-ins.")
    _common(dash)
    dash.add_argument("--host", default=None, help="override [dashboard] host")
    dash.add_argument("--port", type=int, default=None, help="override [dashboard] port")
    # Given before or after the subcommand, alike (the top level holds the defaults).
    dash.add_argument("--metrics-port", type=int, default=argparse.SUPPRESS,
                      help="serve the dashboard's Prometheus /metrics on this port (its own, not the dashboard's)")
    dash.add_argument("--metrics-host", default=argparse.SUPPRESS,
                      help="address to serve /metrics on (default 127.0.0.1: give the scraper's network only)")
    dash_sub = dash.add_subparsers(dest="dashboard_command")
    add_user = dash_sub.add_parser(
        "add-user", help="add or replace a dashboard user",
        description="Add a user to [dashboard] users_file, or replace one (a new role or password); a replaced "
        "user's sessions are revoked in Redis ([redis] url, key_prefix) and the change is audited.")
    _common(add_user)
    add_user.add_argument("username")
    add_user.add_argument("--role", required=True, choices=("risk_analyst", "rm", "admin"))
    add_user.add_argument("--rm-id", default="", help="the RM id whose customers an rm user sees")
    add_user.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add_user.add_argument("--by", default="cli", help="who asks (kept in the audit trail)")
    disable = dash_sub.add_parser(
        "disable-user", help="disable a dashboard user and sign their sessions out",
        description="Mark the user disabled in [dashboard] users_file (they can no longer sign in; "
        "`add-user` enables them again with a new password) and revoke their sessions in Redis.")
    _common(disable)
    disable.add_argument("username")
    disable.add_argument("--by", default="cli", help="who asks (kept in the audit trail)")
    unlock = dash_sub.add_parser(
        "unlock", help="lift the lock of a dashboard username after failed sign-ins",
        description="Lift the lock a username got after [dashboard] lockout_failures failed sign-ins (and clear "
        "its count of failures), in Redis ([redis] url, key_prefix); audited.")
    _common(unlock)
    unlock.add_argument("username")
    unlock.add_argument("--by", default="cli", help="who asks (kept in the audit trail)")

    audit = sub.add_parser("audit", help="audit log tools",
                           description="Tools for the signed, chained audit log of alerts, lifecycle changes "
                           "and dashboard users' actions.")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check an audit log's signed chain and head",
        description="Check every entry's MAC (with the key file), its sequence number and its link to the "
        "entry before, then the log's end against its signed head and, when a file and a Redis log are both "
        "given (or configured), against its head anchored in the other store. Prints one line per log; "
        "exits 0 if every log verifies, 1 naming the first bad or missing entry otherwise, 2 if a log "
        "cannot be read. Default: the logs configured in [audit].")
    _common(verify)
    verify.add_argument("--file", type=Path, help="a JSONL audit log (its signed head is FILE.head)")
    verify.add_argument("--redis", metavar="URL", help="a Redis server holding the log (see --key)")
    verify.add_argument("--key", help="the Redis list of the log (default: <key_prefix>{<redis_key>})")
    verify.add_argument("--key-file", type=Path, help="the HMAC key file (default: [audit] key_file)")
    keygen = audit_sub.add_parser(
        "keygen", help="create the audit log's HMAC key file, or add a new active key to it",
        description="Write a new key file (TOML, mode 0600) with one random 32-byte key, or with --add put a "
        "new key into an existing file and make it the active one (key rotation: older keys stay to verify "
        "what they signed). Give the file to the engine and the dashboard ([audit] key_file), never to the "
        "log's stores.")
    keygen.add_argument("--out", type=Path, required=True, help="the key file to write")
    keygen.add_argument("--add", action="store_true", help="add a new active key to the existing --out file")
    keygen.add_argument("--id", dest="key_id", default=None,
                        help="the new key's id (letters, digits, _ and -; default: k-<8 random hex digits>)")

    keys = sub.add_parser("keys", help="keys of the encryption of personal data at rest",
                          description="Keys of the field-level encryption of personal data in Redis and the "
                          "audit log ([crypto]; README: Encryption at rest).")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    pii_key_options = argparse.ArgumentParser(add_help=False)
    pii_key_options.add_argument("--id", dest="key_id", default=None,
                                 help="the new key's id (letters, digits, _ and -; default: p-<8 random hex digits>)")
    pii_key_options.add_argument("--algorithm", choices=("sm4-gcm", "aes-256-gcm"), default=None,
                                 help="the cipher of new envelopes (default: sm4-gcm, or the file's on rotate)")
    pii_keygen = keys_sub.add_parser(
        "keygen", parents=[pii_key_options], help="create a key file for [crypto] key_file",
        description="Write a new key file (TOML, mode 0600) with one random 32-byte key, the active one. Give "
        "it to the engine and the dashboard ([crypto] key_file, or its text in CRM__CRYPTO__KEYS), never to "
        "Redis or the audit log's stores.")
    pii_keygen.add_argument("--out", type=Path, required=True, help="the key file to write")
    rotate = keys_sub.add_parser(
        "rotate", parents=[pii_key_options],
        help="add a new active key to a key file (old keys keep decrypting); optionally re-encrypt Redis",
        description="Put a new key into the key file and make it the active one: what is written from then "
        "on is sealed with it, and the older keys stay in the file to open what they sealed. Restart the "
        "dashboard, then the engine, with it (a dashboard without the new key cannot open what it seals). "
        "With --reencrypt, then seal again with the new key every "
        "customer hash and timeline in Redis ([redis] url, key_prefix); the audit log is append-only and "
        "signed, so its entries keep their keys, and streams age out (keep retired keys while they hold data).")
    _common(rotate)
    rotate.add_argument("--key-file", type=Path, required=True, help="the key file to rotate")
    rotate.add_argument("--reencrypt", action="store_true",
                        help="re-encrypt the customer hashes and timelines stored in Redis with the new key")

    bridge = sub.add_parser(
        "alert-bridge", help="post Alertmanager's notifications to WeCom / DingTalk / Feishu group robots",
        description="Serve Alertmanager's webhook receiver (webhook_configs url: http://HOST:PORT/): each "
        "notification becomes one markdown message to every [alert_bridge] robot_urls, in [alert_bridge] "
        "format, signed with robot_secret (DingTalk, Feishu). Answers 502 when a robot did not take it, so "
        "Alertmanager retries. GET /healthz answers 200. SIGTERM or Ctrl-C stops it.")
    _common(bridge)
    bridge.add_argument("--listen", default=None, metavar="HOST:PORT",
                        help="override [alert_bridge] listen (0.0.0.0:9095 in a container)")
    bridge.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log lines as text or one JSON object each (default: json)")

    snooze = sub.add_parser(
        "snooze", help="suppress one customer's alerts of a type until a time",
        description="Produce a `control` event to [kafka] control_topic: the engine suppresses the "
        "customer's alerts of that type (every type for *) from the event's time until --until (event "
        "time), and records the snooze, and every alert it suppresses, in the audit trail. "
        "--until now or earlier lifts a snooze.")
    _common(snooze)
    snooze.add_argument("--customer", required=True, help="customer_id")
    snooze.add_argument("--type", required=True, dest="alert_type", help="alert type, or * for every type")
    snooze.add_argument("--until", required=True, help="RFC 3339 end of the snooze, e.g. 2026-11-24T09:00:00Z")
    snooze.add_argument("--by", default=None, help="who asks (kept in the audit trail)")
    snooze.add_argument("--ts", default=None, help="the command's event time (default: now)")
    snooze.add_argument("--bootstrap-servers", help="override [kafka] bootstrap_servers")
    return parser


def _snooze(args: argparse.Namespace, settings: Settings) -> int:
    import time
    import uuid

    import orjson

    from schemas.events import InvalidEvent, event_from_obj
    from schemas.outputs import format_ts

    topic = settings.kafka.control_topic
    if not topic:
        print("no control topic: set [kafka] control_topic (CRM__KAFKA__CONTROL_TOPIC)", file=sys.stderr)
        return 2
    ts = args.ts or format_ts(time.time())
    command = {"kind": "control", "event_id": f"ctl-{uuid.uuid4().hex}", "ts": ts,
               "customer_id": args.customer, "action": "snooze", "alert_type": args.alert_type,
               "until": args.until, "by": args.by}
    try:
        event = event_from_obj(command)
    except InvalidEvent as exc:
        print(f"invalid snooze: {exc}", file=sys.stderr)
        return 2
    if event.until_t is not None and event.until_t <= event.t:  # type: ignore[union-attr]
        command["action"] = "unsnooze"
    from confluent_kafka import Producer

    servers = args.bootstrap_servers or settings.kafka.bootstrap_servers
    producer = Producer({**settings.kafka.producer_config(), "bootstrap.servers": servers})
    producer.produce(topic, orjson.dumps({k: v for k, v in command.items() if v is not None}),
                     args.customer.encode())
    if producer.flush(15):
        print(f"snooze not acknowledged by {servers} within 15 s", file=sys.stderr)
        return 1
    print(f"{command['action']} {args.customer} {args.alert_type} until {args.until}: {command['event_id']}")
    return 0


def _dashboard(args: argparse.Namespace, settings: Settings) -> int:
    if args.dashboard_command == "add-user":
        import getpass

        from dashboard.auth import add_user

        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
        if len(password) < 12:
            print("a password needs at least 12 characters", file=sys.stderr)
            return 2
        try:
            replaced = add_user(settings.dashboard.users_file, args.username, args.role, password, args.rm_id)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"user {args.username} ({args.role}) written to {settings.dashboard.users_file}")
        if replaced:  # a new role or password: the sessions opened under the old entry end
            _revoked(settings, args.username, "user_changed", f"role {args.role}", args.by)
        return 0
    if args.dashboard_command == "disable-user":
        from dashboard.auth import disable_user

        try:
            disable_user(settings.dashboard.users_file, args.username)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"user {args.username} disabled in {settings.dashboard.users_file}")
        _revoked(settings, args.username, "user_disabled", "disabled", args.by)
        return 0
    if args.dashboard_command == "unlock":
        import redis

        from dashboard.server import unlock_user
        from schemas.audit import AuditKeyError

        try:
            held = unlock_user(settings, args.username, args.by)
        except (redis.RedisError, OSError) as exc:
            print(f"Redis is not reachable at [redis] url: {type(exc).__name__}", file=sys.stderr)
            return 1
        except AuditKeyError as exc:
            print(f"unlocking is audited: {exc}", file=sys.stderr)
            return 2
        print(f"{args.username} unlocked" if held is not None else f"{args.username} was not locked")
        return 0
    from dashboard.auth import UserStore
    from dashboard.server import redis_reachable, server
    from schemas.audit import AuditKeyError, AuditKeys, BrokenLog
    from sinks.audit import check_redis_log

    users = UserStore.load(settings.dashboard.users_file)
    if not len(users):
        print(f"no users in {settings.dashboard.users_file}: add one with `python run.py dashboard add-user`",
              file=sys.stderr)
        return 2
    if not redis_reachable(settings.redis.endpoint()):
        print("Redis is not reachable at [redis] url", file=sys.stderr)
        return 1
    key = RedisKeys(settings.redis.key_prefix).audit_log(settings.audit.redis_key)
    try:  # users' actions are appended to the audit log: its key, and a log that verifies
        check_redis_log(settings.redis.endpoint(), key, AuditKeys.load(settings.audit.key_file),
                        settings.redis.socket_timeout_s)
    except AuditKeyError as exc:
        print(f"the dashboard audits its users' actions: {exc}", file=sys.stderr)
        return 2
    except BrokenLog as exc:
        print(f"audit log broken, not appending to it: {exc}. Check it with `python run.py audit verify --key "
              f"{key}`", file=sys.stderr)
        return 2
    if not _crypto_ready(settings):
        return 2
    d = settings.dashboard
    where = f"http://{args.host or d.host}:{args.port or d.port}/"
    if d.insecure_http:
        print(f"dashboard on {where} (plain HTTP: [dashboard] insecure_http = true, cookies without Secure; "
              "for development only)", file=sys.stderr)
    else:
        print(f"dashboard on {where} (cookies are Secure: serve it behind an HTTPS reverse proxy, or set "
              "[dashboard] insecure_http = true for plain-HTTP development)", file=sys.stderr)
    metrics = None
    if args.metrics_port is not None:
        from prometheus_client import CollectorRegistry

        from dashboard.metrics import DashboardMetrics, serve

        metrics = DashboardMetrics(CollectorRegistry())  # this process's own registry
        serve(metrics.registry, args.metrics_host, args.metrics_port)
        print(f"dashboard metrics on http://{args.metrics_host}:{args.metrics_port}/metrics", file=sys.stderr)
    server(settings, args.host, args.port, users, metrics).run()
    return 0


def _revoked(settings: Settings, username: str, action: str, detail: str, by: str) -> None:
    from dashboard.server import revoke_sessions
    from schemas.audit import AuditKeyError

    try:
        count = revoke_sessions(settings, username, action, detail, by)
    except AuditKeyError as exc:
        print(f"the user's sessions were not revoked (revoking is audited): {exc}", file=sys.stderr)
        return
    if count is None:
        print("Redis is not reachable at [redis] url: running dashboards end the user's sessions when they "
              "read the changed users file (within a second)", file=sys.stderr)
    else:
        print(f"{count} sessions of {username} revoked")


#: How many recent events per customer the demo keeps for the dashboard's timelines: enough
#: to see what led to an alert, a few kilobytes per customer.
DEMO_RECENT_EVENTS = 20
#: The key file that signs the demo's audit log unless [audit] key_file names one; the first
#: demo run creates it.
DEMO_AUDIT_KEY_FILE = "audit-key.toml"


def _demo_dashboard(settings: Settings) -> Settings:
    """With ``[dashboard] enabled`` and Redis reachable, the demo writes to Redis (with each
    customer's latest events for the timelines: ``[redis] recent_events``, 20 unless set),
    reads the dashboard's feedback and serves the dashboard in a thread, over plain HTTP
    (``[dashboard] insecure_http``: cookies without Secure); otherwise it says why not."""
    from dataclasses import replace as with_

    d = settings.dashboard
    if not d.enabled:
        return settings
    from dashboard.server import redis_reachable, start_in_thread

    if not redis_reachable(settings.redis.endpoint()):
        print("dashboard off: Redis is not reachable at [redis] url (start redis-server, or set "
              "CRM__REDIS__URL)", file=sys.stderr)
        return settings
    key_file = settings.audit.key_file or DEMO_AUDIT_KEY_FILE
    problem = _demo_audit(settings, Path(key_file))
    if problem:
        print(f"dashboard off: {problem}", file=sys.stderr)
        return settings
    recent = settings.redis.recent_events or DEMO_RECENT_EVENTS
    # The simulator keeps its own clock; the local demo serves plain HTTP, so its cookies
    # cannot be Secure: it sets the development flag, and says so.
    settings = with_(settings, redis=with_(settings.redis, enabled=True, input_stream=d.feedback_stream,
                                           recent_events=recent),
                     audit=with_(settings.audit, redis=True, key_file=key_file),
                     dashboard=with_(d, feedback_time="reference", insecure_http=True))
    _demo_users(settings)
    start_in_thread(settings)
    print(f"dashboard on http://{d.host}:{d.port}/ (plain HTTP for the local demo: [dashboard] insecure_http = "
          f"true, cookies without Secure; users: {d.users_file})", file=sys.stderr)
    return settings


def _demo_audit(settings: Settings, key_file: Path) -> str:
    """The demo's audit log in Redis, signed with ``key_file`` (created on the first run):
    why it cannot be used, or ``""``."""
    from schemas.audit import AuditKeyError, AuditKeys, BrokenLog
    from sinks.audit import check_redis_log

    try:
        if not key_file.exists():
            _write_key_file(key_file, AuditKeys.generate())
            print(f"audit key created: {key_file} (it signs the audit log; keep it to verify the log)",
                  file=sys.stderr)
        keys = AuditKeys.load(key_file)
        key = RedisKeys(settings.redis.key_prefix).audit_log(settings.audit.redis_key)
        check_redis_log(settings.redis.endpoint(), key, keys, settings.redis.socket_timeout_s)
    except AuditKeyError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot write the audit key file {key_file}: {exc.strerror or exc}"
    except BrokenLog as exc:
        return (f"the audit log in Redis cannot be continued with the key in {key_file}: {exc}. Check it with "
                f"`python run.py audit verify --key {key} --key-file {key_file}`, or delete the keys {key}, "
                f"{key}:head and {key}:ids to start a new log")
    return ""


def _audit_ready(settings: Settings) -> bool:
    """Start-up check of the audit logs that are on: the key file loads and each log agrees
    with its signed head (an engine that went on would re-sign a cut log); says why not."""
    a, r = settings.audit, settings.redis
    if not (a.file or a.redis):
        return True
    from schemas.audit import AuditKeyError, AuditKeys, BrokenLog
    from sinks.audit import (
        FileHeadAnchor,
        RedisHeadAnchor,
        check_file_log,
        check_redis_log,
        file_anchor_key,
        redis_anchor_path,
    )

    key = RedisKeys(r.key_prefix).audit_log(a.redis_key)
    both = bool(a.file and a.redis)
    try:
        keys = AuditKeys.load(a.key_file)
        if a.file:
            check_file_log(a.file, keys, RedisHeadAnchor(r.endpoint(), file_anchor_key(key), r.socket_timeout_s)
                           if both else None)
        if a.redis:
            check_redis_log(r.endpoint(), key, keys, r.socket_timeout_s,
                            FileHeadAnchor(redis_anchor_path(a.file)) if both else None)
    except AuditKeyError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return False
    except OSError as exc:
        print(f"audit: cannot read {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return False
    except BrokenLog as exc:
        print(f"audit log broken, not appending to it: {exc}. Check it with `python run.py audit verify`; "
              f"move the log (and its head) aside to start a new one", file=sys.stderr)
        return False
    return True


def _crypto_ready(settings: Settings) -> bool:
    """Start-up check of ``[crypto]``: with encryption on, its keys load; says why not."""
    from schemas.crypto import PiiKeyError

    try:
        settings.crypto.pii_keys()
    except PiiKeyError as exc:
        print(f"crypto: {exc}", file=sys.stderr)
        return False
    return True


def _demo_users(settings: Settings) -> None:
    """A first demo run creates an analyst, an admin and two RMs with random passwords,
    printed once here (only their scrypt hashes are kept)."""
    import secrets

    from dashboard.auth import UserStore, add_user

    path = settings.dashboard.users_file
    if len(UserStore.load(path)):
        return
    for name, role, rm in (("analyst", "risk_analyst", ""), ("admin", "admin", ""), ("rm001", "rm", "rm001"),
                           ("rm002", "rm", "rm002")):
        password = secrets.token_urlsafe(12)
        add_user(path, name, role, password, rm)
        print(f"dashboard user {name} ({role}): password {password}", file=sys.stderr)


def _write_key_file(path: Path, keys: AuditKeys | PiiKeys) -> None:
    """Write a key file readable by its owner only (created 0600, then moved into place)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(keys.to_text())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _audit_keygen(args: argparse.Namespace) -> int:
    from schemas.audit import AuditKeyError, AuditKeys

    out: Path = args.out
    try:
        if args.add:
            keys = AuditKeys.load(out).rotated(args.key_id)
        elif out.exists():
            print(f"{out} exists: its keys verify the logs they signed; add a key with --add, or choose "
                  f"another file", file=sys.stderr)
            return 2
        else:
            keys = AuditKeys.generate(args.key_id)
        _write_key_file(out, keys)
    except AuditKeyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"audit key {keys.active} {'added to' if args.add else 'written to'} {out} (mode 0600; active)")
    return 0


def _pii_keygen(args: argparse.Namespace) -> int:
    from schemas.crypto import PiiKeyError, PiiKeys

    out: Path = args.out
    if out.exists():
        print(f"{out} exists: its keys open what they sealed; add a key with `run.py keys rotate --key-file "
              f"{out}`, or choose another file", file=sys.stderr)
        return 2
    try:
        keys = PiiKeys.generate(args.key_id, args.algorithm or "sm4-gcm")
        _write_key_file(out, keys)
    except PiiKeyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"key {keys.active} ({keys.algorithm}) written to {out} (mode 0600; active)")
    return 0


def _pii_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.crypto import CannotDecrypt, PiiKeyError, PiiKeys, Sealer
    from sinks.redis import reseal_stored

    path: Path = args.key_file
    try:
        keys = PiiKeys.load(path).rotated(args.key_id, args.algorithm)
        _write_key_file(path, keys)
    except PiiKeyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"key {keys.active} ({keys.algorithm}) added to {path} and active; older keys kept "
          f"({', '.join(k for k in keys.keys if k != keys.active)})")
    if not args.reencrypt:
        return 0
    r = settings.redis
    try:
        values, keys_changed = reseal_stored(r.endpoint(), r.key_prefix, Sealer(keys), r.socket_timeout_s)
    except CannotDecrypt as exc:
        print(f"re-encryption stopped: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # redis.ConnectionError is one
        print(f"re-encryption stopped: Redis: {exc}", file=sys.stderr)
        return 1
    print(f"re-encrypted {values} values in {keys_changed} keys under {r.key_prefix!r} with key {keys.active}")
    return 0


def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.audit import AuditKeyError, AuditKeys, Verdict
    from sinks.audit import (
        CannotVerify,
        FileHeadAnchor,
        RedisHeadAnchor,
        file_anchor_key,
        redis_anchor_path,
        verify_file,
        verify_redis,
    )

    a, r = settings.audit, settings.redis
    given = args.file is not None or args.redis is not None or args.key is not None
    file: Path | None = args.file if given else (Path(a.file) if a.file else None)
    # --redis names a single server or Sentinels; the configured [redis] may be a cluster.
    redis_url: str | RedisEndpoint | None = (args.redis or (r.endpoint() if args.key else None)) if given \
        else (r.endpoint() if a.redis else None)
    redis_key = args.key or RedisKeys(r.key_prefix).audit_log(a.redis_key)
    if file is None and redis_url is None:
        print("no audit log given: --file F or --redis URL --key K (or configure [audit])", file=sys.stderr)
        return 2
    try:
        keys = AuditKeys.load(args.key_file if args.key_file is not None else a.key_file)
    except AuditKeyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    both = file is not None and redis_url is not None
    results: list[tuple[str, Verdict | CannotVerify, str]] = []
    if file is not None:
        anchor, where = None, ""
        if both and redis_url is not None:
            where = f"Redis key {file_anchor_key(redis_key)}"
            anchor = RedisHeadAnchor(redis_url, file_anchor_key(redis_key), 10.0).get()
        try:
            results.append((str(file), verify_file(file, keys, anchor, where), where if anchor else ""))
        except CannotVerify as exc:
            results.append((str(file), exc, ""))
    if redis_url is not None:
        anchor, where = None, ""
        if both and file is not None:
            where = str(redis_anchor_path(file))
            anchor = FileHeadAnchor(where).get()
        name = f"Redis key {redis_key}"  # never the URL: it may hold a password
        try:
            results.append((name, verify_redis(redis_url, redis_key, keys, anchor, where), where if anchor else ""))
        except CannotVerify as exc:
            results.append((name, exc, ""))
    broken = unread = False
    for name, result, anchored in results:
        if isinstance(result, CannotVerify):
            print(f"audit log {name} NOT VERIFIED: {result}")
            unread = True
        elif result.ok:
            note = f" (and its head anchored in {anchored})" if anchored else ""
            print(f"audit log {name} OK: {result.message}{note}")
        else:
            print(f"audit log {name} BROKEN: {result.message}")
            broken = True
    return 1 if broken else 2 if unread else 0


def _alert_bridge(args: argparse.Namespace, settings: Settings) -> int:
    from ops.alert_bridge import AlertBridge, BridgeServer, Robot, parse_listen

    b = settings.alert_bridge
    try:
        host, port = parse_listen(args.listen or b.listen)
        bridge = AlertBridge([Robot(url, b.format, b.robot_secret) for url in b.robot_urls], timeout_s=b.timeout_s,
                             attempts=b.attempts, backoff_s=b.backoff_s, max_alerts=b.max_alerts)
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    server = BridgeServer(bridge, host, port)

    def stop(signum: int, frame: object) -> None:
        print(f"{signal.Signals(signum).name}: stopping", file=sys.stderr)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"alert bridge on http://{host}:{server.address[1]}/ -> {len(b.robot_urls)} {b.format} robot(s)",
          file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, os.environ)


def _graceful_stop() -> threading.Event:
    """The first SIGINT or SIGTERM ends the live sources: the dataflow drains what is in
    flight, sinks flush and close, and the process exits 0. A second one interrupts at once."""
    stop = threading.Event()

    def request(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"{signal.Signals(signum).name}: draining and stopping", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, request)
    signal.signal(signal.SIGTERM, request)
    return stop


def _telemetry(args: argparse.Namespace, settings: Settings, stop: threading.Event,
               sources: tuple[str, ...]) -> tuple[Telemetry | None, OpsServer | None]:
    """This process's metrics registry, readiness and HTTP endpoints, if ``--metrics-port``."""
    if args.metrics_port is None:
        return None, None
    from prometheus_client import CollectorRegistry

    from ops import EngineMetrics, Readiness, Telemetry
    from ops.health import OpsServer

    registry = CollectorRegistry()  # this process's own registry, never the global one
    telemetry = Telemetry(EngineMetrics(registry, sources, alert_threshold=settings.fraud.alert_threshold),
                          Readiness(stop))
    if args.bytewax_api_port is not None:
        import tempfile

        from ops.dataflow_api import BytewaxMetrics, api_environment

        # Read by Bytewax when the dataflow starts; its dataflow.json goes to a temporary
        # directory, never the (possibly read-only) working directory.
        cache = Path(tempfile.mkdtemp(prefix="bytewax-api-"))
        os.environ.update(api_environment(args.bytewax_api_port, cache))
        BytewaxMetrics(args.bytewax_api_port, registry)
    return telemetry, OpsServer(args.metrics_host, args.metrics_port, registry, telemetry.readiness).start()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Live sources drain on a stop request; a replay, simulation or evaluation is stopped at once.
    live = args.command in (None, "live")
    stop = _graceful_stop() if live or args.command == "produce" else threading.Event()
    # A stop request surfaces as a Rust panic inside Bytewax; its backtrace is noise.
    os.environ["RUST_BACKTRACE"] = "0"
    from ops.logs import configure_logging

    log_format = getattr(args, "log_format", None) or ("json" if args.command in ("live", "alert-bridge") else "text")
    configure_logging(getattr(args, "log_level", "INFO"), log_format)
    if args.command == "audit" and args.audit_command == "keygen":  # needs no configuration
        return _audit_keygen(args)
    if args.command == "keys" and args.keys_command == "keygen":
        return _pii_keygen(args)
    try:
        settings = _settings(args) if args.command != "simulate" else None
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if settings is not None and getattr(args, "bootstrap_servers", None):
        settings = replace(settings, kafka=replace(settings.kafka, bootstrap_servers=args.bootstrap_servers))
    if args.command == "audit":  # light commands: no dataflow to import
        assert settings is not None
        return _audit_verify(args, settings)
    if args.command == "keys":
        assert settings is not None
        return _pii_rotate(args, settings)
    if args.command == "snooze":
        assert settings is not None
        return _snooze(args, settings)
    if args.command == "dashboard":
        assert settings is not None
        return _dashboard(args, settings)
    if args.command == "alert-bridge":
        assert settings is not None
        return _alert_bridge(args, settings)
    server = telemetry = None
    try:
        if live:
            assert settings is not None
            sources = ("simulator",) if args.command is None else tuple(dict.fromkeys(settings.kafka.topics()))
            telemetry, server = _telemetry(args, settings, stop, sources)
        return _run(args, settings, stop, telemetry)
    finally:
        if server is not None:
            server.close()


def simulator_input(settings: Settings) -> tuple[Callable[[int], Iterator[dict[str, Any]]], Loopback | None]:
    """The built-in simulator mode's input: the simulator's stream from any position (for the
    dataflow's generated-stream source), and the loopback its customers answer prompts through
    when they do (``[simulator] answer_prompts`` with next-best action enabled)."""
    from config.actions import load_actions
    from simulator import SimulatorConfig
    from simulator.loop import Loopback, restartable_stream
    from simulator.responder import Responder

    s = settings.simulator
    loopback = None
    if s.answer_prompts and settings.nba.enabled:
        actions = load_actions(settings.nba.catalogue or None)
        loopback = Loopback(Responder(s.seed, {a.action_id: a for a in actions}))
    config = SimulatorConfig(customers=s.customers, days=s.days, seed=s.seed, fraud_rate=s.fraud_rate)
    return restartable_stream(config, loopback), loopback


def _run(args: argparse.Namespace, settings: Settings | None, stop: threading.Event,
         telemetry: Telemetry | None) -> int:
    from flows import modes

    if args.command is None:
        assert settings is not None
        settings = _demo_dashboard(settings)
        if not (_audit_ready(settings) and _crypto_ready(settings)):
            return 2
        print("Running the built-in simulator; alerts follow. Ctrl-C stops.", file=sys.stderr)
        events, loopback = simulator_input(settings)
        modes.run_demo(settings, stop, events, args.workers, telemetry, loopback)
    elif args.command == "replay":
        assert settings is not None
        if not args.input.exists():
            print(f"input not found: {args.input}", file=sys.stderr)
            return 2
        modes.run_replay(settings, modes.ReplayPaths(
            args.input, args.alerts_out, args.scores_out, args.state_out, args.dead_letter_out,
            args.prompts_out, args.models_out),
            args.workers)
    elif args.command == "live":
        assert settings is not None
        if not (_audit_ready(settings) and _crypto_ready(settings)):
            return 2
        modes.run_live(settings, stop, console=not args.quiet, workers=args.workers,
                       alerts_path=args.alerts_out, dead_letter_path=args.dead_letter_out, telemetry=telemetry)
    elif args.command == "simulate":
        from simulator import SimulatorConfig, write_jsonl

        counts = write_jsonl(SimulatorConfig(customers=args.customers, days=args.days, seed=args.seed,
                                             fraud_rate=args.fraud_rate, voice_texts=args.voice_texts),
                             args.out, args.truth_out)
        print(counts)
    elif args.command == "evaluate" and args.nba:
        assert settings is not None
        from bench import nba_loop

        return nba_loop.run(settings, _or(args.customers, 500), _or(args.days, 150.0), _or(args.seed, 7),
                            args.jobs, args.learned_from_day)
    elif args.command == "evaluate":
        assert settings is not None
        from bench.evaluate import evaluate

        evaluate(settings, customers=_or(args.customers, 2000), days=_or(args.days, 60.0), seed=_or(args.seed, 11),
                 fraud_rate=args.fraud_rate, workdir=args.workdir, workers=args.workers)
    elif args.command == "backtest":
        assert settings is not None
        return _backtest(args, settings)
    elif args.command == "produce":
        assert settings is not None
        from simulator.produce import produce_simulation

        sent = produce_simulation(settings, rate=args.rate, max_events=args.max_events, stop=stop,
                                  customers=args.customers, seed=args.seed, create_partitions=args.create_topics)
        print(f"produced {sent} events", file=sys.stderr)
    return 0


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    from flows.backtest import BadChange, backtest, parse_change, report_text

    if not args.input.exists():
        print(f"input not found: {args.input}", file=sys.stderr)
        return 2
    try:
        changes = [parse_change(text, settings) for text in args.changes]
    except BadChange as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    result = backtest(settings, args.input, changes)
    print(json.dumps(result, indent=2) if args.json else report_text(result))
    return 0


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # not drained: a replay cut short, or a second stop request
        print("interrupted", file=sys.stderr)
        sys.exit(130)
