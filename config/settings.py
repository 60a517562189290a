"""The engine's configuration: one frozen, validated object, loaded once by ``run.py``.

``load_settings(path, environ)`` reads ``config/default.toml`` (or ``path``), then applies
environment overrides named ``CRM__<SECTION>__<KEY>`` (nested sections with more ``__``),
e.g. ``CRM__KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``CRM__FRAUD__ALERT_THRESHOLD=0.7``.
Unknown keys and values of the wrong type are errors that name the key. Nothing else in the
engine reads the environment.

>>> s = load_settings(environ={"CRM__FRAUD__ALERT_THRESHOLD": "0.7", "CRM__ENGINE__WORKERS": "2"})
>>> s.fraud.alert_threshold, s.engine.workers
(0.7, 2)
>>> load_settings(environ={"CRM__FRAUD__NO_SUCH": "1"})
Traceback (most recent call last):
...
config.settings.ConfigError: fraud.no_such: unknown setting
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from detectors.customer import ViewParams
from detectors.fraud import FraudParams
from detectors.nba import NBAParams
from detectors.profile import ProfileParams
from detectors.rules import RuleParams
from engine.admission import InputBounds
from schemas import texts
from schemas.crypto import PiiKeys, Sealer
from schemas.redis_keys import has_braces
from schemas.redis_url import InvalidRedisUrl, RedisEndpoint

DEFAULT_PATH: Final = Path(__file__).with_name("default.toml")
ENV_PREFIX: Final = "CRM__"
SECRET_WORDS: Final = ("password", "secret", "token", "key")


class ConfigError(ValueError):
    """A setting is missing, unknown or of the wrong type."""


@dataclass(frozen=True)
class EngineSettings:
    """How the dataflow runs."""

    workers: int = 1  # Bytewax workers in this process
    # A cluster of processes: every process's "host:port", the same list in each, and this
    # process's index in it. Empty = a single process.
    addresses: tuple[str, ...] = ()
    process_id: int = 0
    epoch_interval_s: float = 2.0  # how often state is snapshotted (and recovery can resume)
    recovery_dir: str = ""  # a directory of SQLite recovery partitions; empty disables recovery
    backup_interval_s: float = 0.0
    # Where `run.py live` reads its events: the Kafka topics of [kafka], or the Redis stream
    # [redis] input_stream (for deployments with Redis and no Kafka; alerts and prompts then
    # go to Redis streams only, so [redis] enabled must be true).
    source: Literal["kafka", "redis"] = "kafka"


@dataclass(frozen=True)
class SimulatorSettings:
    """The built-in simulator used by ``python run.py`` with no arguments."""

    customers: int = 300
    days: float = 365.0
    seed: int = 7
    fraud_rate: float = 0.3
    rate_per_s: float = 2000.0  # 0 = as fast as possible
    # Simulated customers answer the engine's next-best-action prompts (nba_* feedback from
    # their latent preferences), so the bandit learns; only in the process running the simulator.
    answer_prompts: bool = True


@dataclass(frozen=True)
class KafkaSettings:
    """Where live events come from and where alerts go."""

    bootstrap_servers: str = "127.0.0.1:9092"
    transactions_topic: str = "transactions"
    app_topic: str = "app_events"
    feedback_topic: str = "feedback"
    profile_topic: str = "profiles"
    alerts_topic: str = "alerts"
    prompts_topic: str = "nba_prompts"
    dead_letter_topic: str = "dead_letter"
    # Records the broker refuses for good (too large, unknown topic, ...) go to this JSONL
    # file, as dead letters with the reason, instead of the topic they were meant for.
    sink_dead_letter_path: str = "dead_letter_kafka.jsonl"
    # Operator commands (`run.py snooze`) as `control` events; empty = none consumed.
    control_topic: str = ""
    starting_offset: Literal["earliest", "latest"] = "earliest"
    batch_size: int = 1000
    # Extra librdkafka properties: `client` for every client (security.protocol, sasl.*,
    # ssl.*, client.id, ...), `consumer` for the engine's consumers only (fetch.*, ...),
    # `producer` for its producers only (linger.ms, compression.type, ...). librdkafka warns
    # (CONFWARN) about a consumer property given to a producer, and the other way round.
    client: dict[str, str] = field(default_factory=dict)
    consumer: dict[str, str] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)

    def topics(self) -> tuple[str, ...]:
        inputs = (self.transactions_topic, self.app_topic, self.feedback_topic, self.profile_topic)
        return (*inputs, self.control_topic) if self.control_topic else inputs

    def client_config(self) -> dict[str, str | int | float | bool]:
        """Properties every client takes (an admin client takes just these)."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.client}

    def consumer_config(self) -> dict[str, str | int | float | bool]:
        """Properties of the engine's consumers; a producer gets none of them.

        >>> k = KafkaSettings(bootstrap_servers="b:9092", client={"security.protocol": "SSL"},
        ...                   consumer={"fetch.wait.max.ms": "10"}, producer={"linger.ms": "2"})
        >>> k.consumer_config()
        {'bootstrap.servers': 'b:9092', 'security.protocol': 'SSL', 'fetch.wait.max.ms': '10'}
        >>> k.producer_config()
        {'bootstrap.servers': 'b:9092', 'security.protocol': 'SSL', 'linger.ms': '2'}
        """
        return {**self.client_config(), **self.consumer}

    def producer_config(self) -> dict[str, str | int | float | bool]:
        return {**self.client_config(), **self.producer}


@dataclass(frozen=True)
class RedisSettings:
    """The Redis sink (live modes): alert stream, per-RM prompt streams, customer hashes."""

    enabled: bool = False
    # redis://, rediss:// (TLS), unix://, or a master behind Sentinels:
    # redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
    url: str = "redis://127.0.0.1:6379/0"
    # The url names one node of a Redis Cluster (the others are discovered). Every key is
    # hash-tagged (README: Redis key layout), so scripts and transactions stay in one slot.
    cluster: bool = False
    key_prefix: str = "crm:"
    alerts_maxlen: int = 100_000  # approximate bound of the alerts stream
    prompts_maxlen: int = 10_000  # approximate bound of each RM's prompt stream
    dedup_ttl_s: float = 604_800.0  # how long a delivered id is remembered (idempotency)
    socket_timeout_s: float = 5.0
    buffer_capacity: int = 10_000  # records held while Redis is down; beyond: dead letter
    retry_budget_s: float = 300.0  # a batch undelivered this long: dead letter
    dead_letter_path: str = "dead_letter_redis.jsonl"
    dead_letter_topic: str = ""  # a Kafka topic instead of the file
    # Live modes: a stream of input events (any kind of the contract; the dashboard writes its
    # feedback there) read as one more source partition; "" = none. With [engine] source =
    # "redis", the engine's only input, and what it refuses goes to input_dead_letter_path
    # (unless `run.py live --dead-letter-out` names another file).
    input_stream: str = ""
    input_dead_letter_path: str = "dead_letter_input.jsonl"
    # Read input_stream as this consumer group ("" = plain reads from a cursor): entries are
    # acknowledged (XACK) at the end of the epoch that processed them, a restart first reads
    # its own unacknowledged entries again, and the group's lag is exported. input_consumer
    # names this process in the group ("" = host name and [engine] process_id); it must stay
    # the same across restarts (a StatefulSet's pod name does).
    input_group: str = ""
    input_consumer: str = ""
    # Live modes: keep each customer's latest N input events (a compact summary of each) in
    # the capped list <key_prefix>customer:{<id>}:events for the dashboard's timelines; 0 = none.
    recent_events: int = 0

    def __post_init__(self) -> None:
        if self.recent_events < 0:
            raise ConfigError(f"redis.recent_events: expected 0 (off) or more, got {self.recent_events}")
        try:
            self.endpoint()
        except InvalidRedisUrl as exc:
            raise ConfigError(f"redis.url: {exc}") from None
        for name in ("key_prefix", "input_stream"):
            if has_braces(getattr(self, name)):
                raise ConfigError(f"redis.{name}: may not hold {{ or }} (the key layout's hash tags place keys "
                                  f"in Redis Cluster slots), got {getattr(self, name)!r}")

    def endpoint(self) -> RedisEndpoint:
        """Where Redis is (``url`` and ``cluster``), checked; printed with its password masked."""
        return RedisEndpoint(self.url, self.cluster)


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook sink (live modes): generic JSON or a group robot's markdown (WeCom,
    DingTalk, Feishu)."""

    enabled: bool = False
    url: str = ""
    format: Literal["json", "wecom", "dingtalk", "feishu"] = "json"
    timeout_s: float = 5.0
    buffer_capacity: int = 10_000
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_budget_s: float = 300.0
    dead_letter_path: str = "dead_letter_webhook.jsonl"
    dead_letter_topic: str = ""
    # Sign every request (X-CRM-Timestamp, X-CRM-Signature: HMAC-SHA256 of "timestamp.body",
    # schemas/webhook.py); "" = unsigned. Give it in the environment
    # (CRM__WEBHOOK__SIGNING_SECRET, from a Secret), not in a file kept with the config.
    signing_secret: str = ""
    # A DingTalk or Feishu robot's signing secret ("加签"; schemas/robots.py); "" = unsigned.
    # From the environment too (CRM__WEBHOOK__ROBOT_SECRET).
    robot_secret: str = ""


@dataclass(frozen=True)
class AlertBridgeSettings:
    """``run.py alert-bridge``: Alertmanager's webhook notifications to a group chat robot."""

    listen: str = "127.0.0.1:9095"  # host:port the bridge serves Alertmanager on
    # The robot's webhook URL(s): every notification goes to each. They hold the robot's
    # token: give them in the environment (CRM__ALERT_BRIDGE__ROBOT_URLS, comma-separated).
    robot_urls: tuple[str, ...] = ()
    format: Literal["wecom", "dingtalk", "feishu"] = "wecom"
    # The robot's signing secret (DingTalk, Feishu); "" = unsigned (CRM__ALERT_BRIDGE__ROBOT_SECRET).
    robot_secret: str = ""
    timeout_s: float = 5.0  # per attempt
    attempts: int = 3  # per robot per notification; then Alertmanager is answered 502 and retries
    backoff_s: float = 0.5  # before the second attempt, doubled before each next one
    max_alerts: int = 20  # alerts listed in one message (the rest counted)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout_s <= 0 or self.backoff_s < 0 or self.max_alerts < 1:
            raise ConfigError("alert_bridge: attempts and max_alerts must be 1 or more, timeout_s above 0, "
                              "backoff_s 0 or more")
        for url in self.robot_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError("alert_bridge.robot_urls: expected http(s)://... URLs")


@dataclass(frozen=True)
class AuditSettings:
    """The signed, chained audit log of alerts and lifecycle changes (live modes), and of
    the dashboard users' actions."""

    file: str = ""  # a JSONL log; empty = none
    redis: bool = False  # also a Redis list at [redis] url, key "<key_prefix>{<redis_key>}"
    redis_key: str = "audit"
    # The HMAC key file (`run.py audit keygen`), never kept with the log; needed by any audit
    # log and by the dashboard.
    key_file: str = ""

    def __post_init__(self) -> None:
        if has_braces(self.redis_key):
            raise ConfigError(f"audit.redis_key: may not hold {{ or }} (it is the log's hash tag), got "
                              f"{self.redis_key!r}")
        if (self.file or self.redis) and not self.key_file:
            raise ConfigError("audit.key_file: an audit log is on ([audit] file or redis) but no HMAC key file "
                              "is set: create one with `python run.py audit keygen --out FILE` and set "
                              "[audit] key_file (CRM__AUDIT__KEY_FILE)")


@dataclass(frozen=True)
class CryptoSettings:
    """Field-level encryption of personal data at rest (``schemas.crypto``): the personal
    fields of the Redis timelines and customer hashes and of the audit log's records."""

    enabled: bool = False
    # The key file (`run.py keys keygen --out FILE`), never kept with the data; or `keys`,
    # the same text from the environment (a Secret: CRM__CRYPTO__KEYS), which wins.
    key_file: str = ""
    keys: str = ""

    def __post_init__(self) -> None:
        if self.enabled and not (self.key_file or self.keys):
            raise ConfigError("crypto.key_file: encryption is on ([crypto] enabled) but no key is given: create "
                              "a key file with `python run.py keys keygen --out FILE` and set [crypto] key_file "
                              "(CRM__CRYPTO__KEY_FILE), or give its text in CRM__CRYPTO__KEYS")

    def pii_keys(self) -> PiiKeys | None:
        """The keys (``schemas.crypto.PiiKeyError`` if they do not load); ``None`` when off."""
        if not self.enabled:
            return None
        if self.keys:
            return PiiKeys.parse(self.keys, "CRM__CRYPTO__KEYS")
        return PiiKeys.load(self.key_file)

    def sealer(self) -> Sealer | None:
        """A ``Sealer`` of the keys; ``None`` when off."""
        keys = self.pii_keys()
        return None if keys is None else Sealer(keys)


@dataclass(frozen=True)
class DashboardSettings:
    """The web dashboard (``python run.py dashboard``; with ``enabled``, also ``python run.py``)."""

    enabled: bool = True  # start it with the built-in simulator when Redis is reachable
    host: str = "127.0.0.1"
    port: int = 8000
    users_file: str = "dashboard-users.toml"  # users and their scrypt hashes (run.py dashboard add-user)
    secret: str = ""  # signs session cookies; "" = a random one per start (sessions end with it)
    session_ttl_s: float = 8 * 3600.0
    # Cookies are Secure (sent over HTTPS only) and responses carry HSTS; true drops both, for
    # plain-HTTP development only (`make run`'s local demo sets it and says so).
    insecure_http: bool = False
    feedback_stream: str = "feedback:in"  # where actions send feedback (<key_prefix>{dash}:in:<this>)
    # The time written on feedback events: "wall" (now; live) or "reference" (the event time of
    # the alert or prompt answered; the simulator runs its own clock).
    feedback_time: Literal["wall", "reference"] = "wall"
    page_size_max: int = 200
    # Failed sign-ins, counted per username and per client address in Redis (README: Dashboard).
    login_window_s: float = 900.0  # failures are counted for this long from the first one
    login_free_failures: int = 3  # failures of a username before each next attempt must wait ...
    login_ip_free_failures: int = 10  # ... and of a client address
    login_backoff_s: float = 1.0  # the first wait, doubled with every further failure ...
    login_backoff_max_s: float = 60.0  # ... up to this
    lockout_failures: int = 10  # failures in the window that lock the username (0: never)
    lockout_s: float = 1800.0  # how long a lock lasts unless an administrator lifts it sooner
    # The admin's rule back-test (run.py backtest in a background process): the recorded
    # stream it replays ("" = off) and the config file whose rules are the current ones
    # ("" = config/default.toml; CRM__ environment overrides are passed on).
    backtest_input: str = ""
    backtest_config: str = ""
    backtest_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if has_braces(self.feedback_stream):
            raise ConfigError(f"dashboard.feedback_stream: may not hold {{ or }} (hash tags), got "
                              f"{self.feedback_stream!r}")
        for name in ("login_free_failures", "login_ip_free_failures", "lockout_failures", "login_backoff_s",
                     "login_backoff_max_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"dashboard.{name}: expected 0 or more, got {getattr(self, name)}")
        for name in ("login_window_s", "lockout_s", "session_ttl_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"dashboard.{name}: expected more than 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DisplaySettings:
    """What people read: the language of alert and prompt reasons, chat messages and the
    dashboard, and the time zone times are shown in (the data itself stays in UTC)."""

    locale: Literal["en", "zh-CN"] = "en"
    timezone: str = ""  # an IANA name; "" = the locale's (en: UTC, zh-CN: Asia/Shanghai)

    def __post_init__(self) -> None:
        if self.timezone:
            texts.timezone(self.timezone)  # ValueError names the problem

    @property
    def zone(self) -> str:
        """The display time zone in effect."""
        return self.timezone or texts.DEFAULT_TIMEZONE[self.locale]


@dataclass(frozen=True)
class Settings:
    """Everything configurable, validated."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    input: InputBounds = field(default_factory=InputBounds)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    profile: ProfileParams = field(default_factory=ProfileParams)
    rules: RuleParams = field(default_factory=RuleParams)
    fraud: FraudParams = field(default_factory=FraudParams)
    view: ViewParams = field(default_factory=ViewParams)
    nba: NBAParams = field(default_factory=NBAParams)
    redis: RedisSettings = field(default_factory=RedisSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    alert_bridge: AlertBridgeSettings = field(default_factory=AlertBridgeSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    crypto: CryptoSettings = field(default_factory=CryptoSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    display: DisplaySettings = field(default_factory=DisplaySettings)

    def __post_init__(self) -> None:
        if self.engine.source == "redis" and not (self.redis.enabled and self.redis.input_stream):
            raise ConfigError("engine.source = \"redis\" needs redis.enabled = true (alerts and prompts go to "
                              "Redis streams) and redis.input_stream (the stream events are read from)")

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secret values replaced, for logs and ``--help``."""
        return _mask(dataclasses.asdict(self))


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if value and any(word in key.lower() for word in SECRET_WORDS):
        return "***"
    if key == "url" and isinstance(value, str) and ("?" in value or "@" in value or "/hook/" in value):
        return "***"  # credentials in a URL: a Redis password, a robot's key=... or Feishu's /hook/<token>
    if key.endswith("_urls") and value:
        return "***"  # robot URLs carry their tokens
    return value


def _coerce(path: str, tp: Any, value: Any) -> Any:
    """``value`` (from TOML or an environment string) as type ``tp``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table")
        return _build(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(path, args[0], value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(_coerce(path, typing.get_args(tp)[0], item) for item in items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table")
        return {str(k): str(v) for k, v in value.items()}
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None


def _build(cls: Any, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"{prefix}{'.' if prefix else ''}{key}: unknown setting")
    kwargs = {key: _coerce(f"{prefix}{'.' if prefix else ''}{key}", hints[key], value)
              for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a section's own validation (``__post_init__``)
        raise ConfigError(f"{prefix or 'settings'}: {exc}") from None


def _set_path(tree: dict[str, Any], keys: list[str], value: str) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def read_toml(file: Path, what: str) -> dict[str, Any]:
    """The TOML document in ``file``; a missing or malformed file is a ``ConfigError``."""
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: {exc}") from None


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then ``CRM__...`` environment overrides."""
    tree = read_toml(Path(path) if path is not None else DEFAULT_PATH, "config file")
    for name, value in sorted((environ or {}).items()):
        if name.startswith(ENV_PREFIX):
            keys = name[len(ENV_PREFIX):].lower().split("__")
            _set_path(tree, keys, value)
    settings: Settings = _build(Settings, tree)
    return settings

