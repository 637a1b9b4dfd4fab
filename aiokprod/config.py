"""Producer configuration: defaults, validation with clear messages, and the Java/librdkafka dotted names.

Names follow aiokafka's keyword style (``linger_ms``, ``enable_idempotence``). ``ProducerConfig.from_dict``
also accepts the dotted names of the Java client and librdkafka (``linger.ms``, ``queue.buffering.max.ms``).

Idempotence follows the Java client's rule (KIP-679): it is on by default; when the user did not ask for it
and another setting forbids it (``acks`` other than all, more than 5 requests in flight) it is quietly off;
when the user asked for it explicitly, the conflict is an error.
"""
from __future__ import annotations

import dataclasses
import math
import ssl
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, TypedDict

if TYPE_CHECKING:  # annotations only: config stays below the modules that use it
    from aiokprod.interceptors import ProducerInterceptor
    from aiokprod.partitioner import Partitioner

COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# The broker keeps the last 5 batches per producer and partition for duplicate detection.
MAX_IDEMPOTENT_IN_FLIGHT = 5
DEFAULT_DELIVERY_TIMEOUT_MS = 120000


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class ProducerSettings(TypedDict, total=False):
    """The keywords of ``Producer(bootstrap_servers, **settings)``, for type checkers: every init field of
    :class:`ProducerConfig` but ``bootstrap_servers`` (Producer's own first parameter; a TypedDict key may not
    repeat a parameter's name). Types are the ones validate() accepts, stated for a caller: where a field is
    ``Any`` in the dataclass (it holds the raw value before validation), the accepted forms are spelled out.
    ``tests/test_config.py`` checks the keys against the dataclass's fields, so the two cannot drift."""

    client_id: str
    acks: int | Literal["all"]  # 0, 1, -1 or "all" (= -1)
    compression_type: Optional[str]  # one of COMPRESSION_TYPES; None = "none"
    compression_level: Optional[int]
    batch_size: int
    linger_ms: float
    max_request_size: int
    buffer_memory: int
    max_block_ms: int
    request_timeout_ms: int
    retry_backoff_ms: int
    retry_backoff_max_ms: int
    delivery_timeout_ms: Optional[int]
    retries: Optional[int]
    enable_idempotence: Optional[bool]
    max_in_flight_requests_per_connection: int
    metadata_max_age_ms: int
    allow_auto_create_topics: bool
    # None/"default"/"murmur2", "round_robin", a Partitioner object or fn(topic, key, partitions) -> int.
    partitioner: Optional[str | Partitioner | Callable[[str, Optional[bytes], list[int]], int]]
    key_serializer: Optional[Callable[[Any], bytes]]
    value_serializer: Optional[Callable[[Any], bytes]]
    interceptors: Sequence[ProducerInterceptor]
    transactional_id: Optional[str]
    transaction_timeout_ms: int
    security_protocol: str
    ssl_context: Optional[ssl.SSLContext]
    sasl_mechanism: Optional[str]
    sasl_plain_username: Optional[str]
    sasl_plain_password: Optional[str]
    connections_max_idle_ms: int
    socket_connection_setup_timeout_ms: int
    stop_timeout_ms: int
    hooks: Sequence[Any]
    on_delivery_error: Optional[Callable[[BaseException, Any], Any]]


@dataclasses.dataclass
class ProducerConfig:
    bootstrap_servers: Any = "127.0.0.1:9092"
    client_id: str = "aiokprod"
    acks: Any = "all"
    compression_type: Optional[str] = None
    compression_level: Optional[int] = None
    batch_size: int = 16384
    linger_ms: float = 5
    max_request_size: int = 1048576
    buffer_memory: int = 32 * 1024 * 1024
    max_block_ms: int = 60000
    request_timeout_ms: int = 30000
    retry_backoff_ms: int = 100
    retry_backoff_max_ms: int = 1000
    # None: 120000, or linger_ms + request_timeout_ms if that is more (validate() fills the number in).
    delivery_timeout_ms: Optional[int] = None
    retries: Optional[int] = None
    enable_idempotence: Optional[bool] = None
    max_in_flight_requests_per_connection: int = 5
    metadata_max_age_ms: int = 300000
    allow_auto_create_topics: bool = True
    partitioner: Any = None
    key_serializer: Optional[Callable[[Any], bytes]] = None
    value_serializer: Optional[Callable[[Any], bytes]] = None
    interceptors: Sequence[Any] = ()
    # Instrumentation (aiokprod/hooks.py) and the per-record failure callback fn(error, record).
    hooks: Sequence[Any] = ()
    on_delivery_error: Optional[Callable[[BaseException, Any], Any]] = None
    transactional_id: Optional[str] = None
    transaction_timeout_ms: int = 60000
    security_protocol: str = "PLAINTEXT"
    ssl_context: Optional[ssl.SSLContext] = None
    sasl_mechanism: Optional[str] = None
    sasl_plain_username: Optional[str] = None
    sasl_plain_password: Optional[str] = None
    connections_max_idle_ms: int = 540000
    # Opening a connection (TCP, TLS, ApiVersions, SASL) gives up after this: an address that silently
    # drops packets must not hold start() for a whole request_timeout_ms (the Java client's 10 s).
    socket_connection_setup_timeout_ms: int = 10000
    stop_timeout_ms: int = 30000

    # Filled in by validate(): the normalised forms the other modules use.
    acks_value: int = dataclasses.field(default=-1, init=False)
    idempotent: bool = dataclasses.field(default=True, init=False)
    bootstrap_list: list[tuple[str, int]] = dataclasses.field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> "ProducerConfig":
        """Build from keyword names or Java/librdkafka dotted names (mixed is fine)."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs: dict[str, Any] = {}
        for name, value in settings.items():
            key = DOTTED_NAMES.get(name, name)
            if key not in known:
                raise ConfigError(f"unknown producer setting {name!r}")
            if key in kwargs:
                raise ConfigError(f"producer setting {key!r} given twice (as {name!r})")
            kwargs[key] = _from_string(key, name, value) if isinstance(value, str) else value
        return cls(**kwargs)

    def validate(self) -> None:
        self.bootstrap_list = parse_bootstrap(self.bootstrap_servers)
        self.acks_value = _parse_acks(self.acks)
        if self.compression_type is None:
            self.compression_type = "none"
        if self.compression_type not in COMPRESSION_TYPES:
            raise ConfigError(f"compression_type must be one of {COMPRESSION_TYPES}, got {self.compression_type!r}")
        if self.compression_level is not None and not isinstance(self.compression_level, int):
            raise ConfigError(f"compression_level must be an int or None, got {self.compression_level!r}")
        for name, low in (
            ("batch_size", 1), ("max_request_size", 1), ("buffer_memory", 1), ("max_block_ms", 0),
            ("request_timeout_ms", 1), ("retry_backoff_ms", 0), ("retry_backoff_max_ms", 0),
            ("max_in_flight_requests_per_connection", 1),
            ("metadata_max_age_ms", 0), ("transaction_timeout_ms", 1), ("stop_timeout_ms", 0),
            ("connections_max_idle_ms", 0), ("socket_connection_setup_timeout_ms", 1),
        ):
            _check_int(name, getattr(self, name), low)
        if not isinstance(self.linger_ms, (int, float)) or isinstance(self.linger_ms, bool) or self.linger_ms < 0:
            raise ConfigError(f"linger_ms must be a number >= 0, got {self.linger_ms!r}")
        if self.retries is not None:
            _check_int("retries", self.retries, 0)
        self._validate_delivery_timeout()
        if self.buffer_memory < self.batch_size:
            raise ConfigError(
                f"buffer_memory ({self.buffer_memory}) must be at least batch_size ({self.batch_size})"
            )
        # A non-bool here is a mistake to report, not a truthy value: "false" would switch idempotence on.
        if self.enable_idempotence is not None and not isinstance(self.enable_idempotence, bool):
            raise ConfigError(f"enable_idempotence must be True, False or None, got {self.enable_idempotence!r}")
        if not isinstance(self.allow_auto_create_topics, bool):
            raise ConfigError(f"allow_auto_create_topics must be True or False, got {self.allow_auto_create_topics!r}")
        for name in ("key_serializer", "value_serializer"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigError(f"{name} must be callable, got {value!r}")
        self.interceptors = tuple(self.interceptors or ())
        if isinstance(self.hooks, (str, bytes)) or not hasattr(self.hooks, "__iter__"):
            raise ConfigError(f"hooks must be a list of hook objects, got {self.hooks!r}")
        self.hooks = tuple(self.hooks)
        if self.on_delivery_error is not None and not callable(self.on_delivery_error):
            raise ConfigError(f"on_delivery_error must be callable as fn(error, record), got {self.on_delivery_error!r}")
        self._validate_security()
        self._validate_idempotence()

    def _validate_delivery_timeout(self) -> None:
        """The Java client's rule: a record must get at least one full attempt (lingering, then one request
        timeout) before it can expire, or it would be failed while its only request may still be answered.
        Asked for explicitly, a shorter delivery_timeout_ms is an error; left to its default, it is raised to
        linger_ms + request_timeout_ms (the Java client does both)."""
        floor = self.linger_ms + self.request_timeout_ms
        if self.delivery_timeout_ms is None:
            self.delivery_timeout_ms = max(DEFAULT_DELIVERY_TIMEOUT_MS, math.ceil(floor))
            return
        _check_int("delivery_timeout_ms", self.delivery_timeout_ms, 1)
        if self.delivery_timeout_ms < floor:
            raise ConfigError(
                f"delivery_timeout_ms ({self.delivery_timeout_ms}) must be at least linger_ms + "
                f"request_timeout_ms ({self.linger_ms} + {self.request_timeout_ms} = {floor}): a record must "
                "get a whole attempt before it expires")

    def _validate_security(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"security_protocol must be one of {SECURITY_PROTOCOLS}, got {self.security_protocol!r}")
        if self.security_protocol in ("SSL", "SASL_SSL") and self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(f"sasl_mechanism must be one of {SASL_MECHANISMS}, got {self.sasl_mechanism!r}")
            if not self.sasl_plain_username or self.sasl_plain_password is None:
                raise ConfigError("SASL needs sasl_plain_username and sasl_plain_password")

    def _validate_idempotence(self) -> None:
        explicit = self.enable_idempotence
        conflicts = []
        if self.acks_value != -1:
            conflicts.append(f"acks={self.acks!r} (idempotence needs acks='all')")
        if self.max_in_flight_requests_per_connection > MAX_IDEMPOTENT_IN_FLIGHT:
            conflicts.append(
                f"max_in_flight_requests_per_connection={self.max_in_flight_requests_per_connection} "
                f"(idempotence allows at most {MAX_IDEMPOTENT_IN_FLIGHT})"
            )
        if self.retries == 0:
            conflicts.append("retries=0 (idempotence needs retries)")
        if self.transactional_id is not None:
            if explicit is False:
                raise ConfigError("transactional_id needs enable_idempotence (it was set to False)")
            if conflicts:
                raise ConfigError("transactional_id needs idempotence, which conflicts with " + ", ".join(conflicts))
            if not isinstance(self.transactional_id, str) or not self.transactional_id:
                raise ConfigError(f"transactional_id must be a non-empty str or None, got {self.transactional_id!r}")
            self.idempotent = True
            return
        if explicit and conflicts:
            raise ConfigError("enable_idempotence=True conflicts with " + ", ".join(conflicts))
        self.idempotent = bool(explicit) if explicit is not None else not conflicts


# Settings that Java properties files and librdkafka configs give as strings ("5", "true"): from_dict converts.
_BOOL_SETTINGS = {"enable_idempotence", "allow_auto_create_topics"}
_NUMBER_SETTINGS = {
    "compression_level", "batch_size", "linger_ms", "max_request_size", "buffer_memory", "max_block_ms",
    "request_timeout_ms", "retry_backoff_ms", "retry_backoff_max_ms", "delivery_timeout_ms", "retries",
    "max_in_flight_requests_per_connection", "metadata_max_age_ms", "transaction_timeout_ms",
    "connections_max_idle_ms", "socket_connection_setup_timeout_ms", "stop_timeout_ms",
}


def _from_string(key: str, name: str, value: str) -> Any:
    if key in _BOOL_SETTINGS:
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ConfigError(f"{name} must be 'true' or 'false', got {value!r}")
    if key in _NUMBER_SETTINGS:
        try:
            return int(value)
        except ValueError:
            pass
        if key == "linger_ms":
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return value


def parse_bootstrap(servers: Any) -> list[tuple[str, int]]:
    if isinstance(servers, str):
        items = [s.strip() for s in servers.split(",") if s.strip()]
    elif isinstance(servers, (list, tuple)):
        items = [str(s).strip() for s in servers]
    else:
        raise ConfigError(f"bootstrap_servers must be 'host:port[,host:port]' or a list, got {servers!r}")
    if not items:
        raise ConfigError("bootstrap_servers is empty")
    result = []
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "9092"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bad bootstrap server {item!r}: expected host:port")
        result.append((host, int(port)))
    return result


def _parse_acks(acks: Any) -> int:
    if acks in ("all", -1, "-1"):
        return -1
    if acks in (0, 1, "0", "1"):
        return int(acks)
    raise ConfigError(f"acks must be 0, 1 or 'all' (-1), got {acks!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")


# Java client and librdkafka names -> ours.
DOTTED_NAMES = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "client.id": "client_id",
    "acks": "acks",
    "request.required.acks": "acks",
    "compression.type": "compression_type",
    "compression.codec": "compression_type",
    "compression.level": "compression_level",
    "batch.size": "batch_size",
    "linger.ms": "linger_ms",
    "queue.buffering.max.ms": "linger_ms",
    "max.request.size": "max_request_size",
    "message.max.bytes": "max_request_size",
    "buffer.memory": "buffer_memory",
    "max.block.ms": "max_block_ms",
    "request.timeout.ms": "request_timeout_ms",
    "retry.backoff.ms": "retry_backoff_ms",
    "retry.backoff.max.ms": "retry_backoff_max_ms",
    "delivery.timeout.ms": "delivery_timeout_ms",
    "message.timeout.ms": "delivery_timeout_ms",
    "retries": "retries",
    "message.send.max.retries": "retries",
    "enable.idempotence": "enable_idempotence",
    "max.in.flight.requests.per.connection": "max_in_flight_requests_per_connection",
    "max.in.flight": "max_in_flight_requests_per_connection",
    "metadata.max.age.ms": "metadata_max_age_ms",
    "allow.auto.create.topics": "allow_auto_create_topics",
    "partitioner": "partitioner",
    "transactional.id": "transactional_id",
    "transaction.timeout.ms": "transaction_timeout_ms",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "connections.max.idle.ms": "connections_max_idle_ms",
    "socket.connection.setup.timeout.ms": "socket_connection_setup_timeout_ms",
}
