"""Producer configuration without a broker: validation messages, dotted names, the idempotence rules."""
from __future__ import annotations

import pytest

from aiokprod import Producer
import dataclasses

from aiokprod.config import DOTTED_NAMES, ConfigError, ProducerConfig, ProducerSettings


def test_defaults():
    config = ProducerConfig()
    assert config.acks_value == -1
    assert config.compression_type == "none"
    assert config.idempotent is True  # on by default (KIP-679)
    assert config.bootstrap_list == [("127.0.0.1", 9092)]
    assert config.max_in_flight_requests_per_connection == 5


@pytest.mark.parametrize("acks, value", [("all", -1), (-1, -1), ("-1", -1), (0, 0), ("0", 0), (1, 1), ("1", 1)])
def test_acks_forms(acks, value):
    assert ProducerConfig(acks=acks, enable_idempotence=False).acks_value == value


@pytest.mark.parametrize("settings, message", [
    (dict(acks=2), r"acks must be 0, 1 or 'all' \(-1\), got 2"),
    (dict(compression_type="brotli"), r"compression_type must be one of .*'zstd'.*got 'brotli'"),
    (dict(batch_size=0), r"batch_size must be an int >= 1, got 0"),
    (dict(batch_size=1.5), r"batch_size must be an int >= 1, got 1.5"),
    (dict(batch_size=True), r"batch_size must be an int >= 1, got True"),
    (dict(linger_ms=-1), r"linger_ms must be a number >= 0, got -1"),
    (dict(max_block_ms=-5), r"max_block_ms must be an int >= 0, got -5"),
    (dict(retries=-1), r"retries must be an int >= 0, got -1"),
    (dict(buffer_memory=1000, batch_size=2000), r"buffer_memory \(1000\) must be at least batch_size \(2000\)"),
    (dict(bootstrap_servers="host:notaport"), r"bad bootstrap server 'host:notaport'"),
    (dict(bootstrap_servers=""), r"bootstrap_servers is empty"),
    (dict(bootstrap_servers=42), r"bootstrap_servers must be"),
    (dict(value_serializer="json"), r"value_serializer must be callable"),
    (dict(security_protocol="TLS"), r"security_protocol must be one of"),
    (dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI"), r"sasl_mechanism must be one of"),
    (dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"), r"needs sasl_plain_username"),
    (dict(enable_idempotence="false"), r"enable_idempotence must be True, False or None, got 'false'"),
    (dict(allow_auto_create_topics="no"), r"allow_auto_create_topics must be True or False"),
])
def test_validation_messages(settings, message):
    with pytest.raises(ConfigError, match=message):
        ProducerConfig(**settings)


def test_config_error_is_a_value_error_and_producer_validates_at_construction():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="linger_ms"):
        Producer("127.0.0.1:9092", linger_ms="soon")


def test_bootstrap_forms():
    config = ProducerConfig(bootstrap_servers="a:1, b:2,c")
    assert config.bootstrap_list == [("a", 1), ("b", 2), ("c", 9092)]
    assert ProducerConfig(bootstrap_servers=["[::1]:9093"]).bootstrap_list == [("::1", 9093)]


# -- dotted names -----------------------------------------------------------------------------------------

def test_dotted_names_java_and_librdkafka():
    config = ProducerConfig.from_dict({
        "bootstrap.servers": "k1:9092,k2:9093",
        "linger.ms": 7,
        "batch.size": 1000,
        "compression.type": "lz4",
        "acks": "all",
        "max.in.flight.requests.per.connection": 3,
        "delivery.timeout.ms": 45000,
        "client_id": "mixed-with-keywords",
    })
    assert config.bootstrap_list == [("k1", 9092), ("k2", 9093)]
    assert (config.linger_ms, config.batch_size, config.compression_type) == (7, 1000, "lz4")
    assert config.max_in_flight_requests_per_connection == 3
    assert config.delivery_timeout_ms == 45000 and config.client_id == "mixed-with-keywords"
    librdkafka = ProducerConfig.from_dict({"metadata.broker.list": "h:1", "queue.buffering.max.ms": 3,
                                           "compression.codec": "zstd", "request.required.acks": 1,
                                           "message.timeout.ms": 40000})
    assert (librdkafka.linger_ms, librdkafka.compression_type, librdkafka.acks_value) == (3, "zstd", 1)
    assert librdkafka.delivery_timeout_ms == 40000
    assert librdkafka.idempotent is False  # acks=1, idempotence not asked for: quietly off


def test_dotted_names_accept_strings_like_properties_files():
    config = ProducerConfig.from_dict({"linger.ms": "0.5", "batch.size": "2048", "retries": "3",
                                       "enable.idempotence": "false", "allow.auto.create.topics": "True"})
    assert (config.linger_ms, config.batch_size, config.retries) == (0.5, 2048, 3)
    assert config.enable_idempotence is False and config.idempotent is False
    assert config.allow_auto_create_topics is True
    with pytest.raises(ConfigError, match=r"batch.size must be a number, got 'big'"):
        ProducerConfig.from_dict({"batch.size": "big"})
    with pytest.raises(ConfigError, match=r"enable.idempotence must be 'true' or 'false', got 'yes'"):
        ProducerConfig.from_dict({"enable.idempotence": "yes"})


def test_dotted_names_errors():
    with pytest.raises(ConfigError, match=r"unknown producer setting 'linger.millis'"):
        ProducerConfig.from_dict({"linger.millis": 5})
    with pytest.raises(ConfigError, match=r"'linger_ms' given twice \(as 'queue.buffering.max.ms'\)"):
        ProducerConfig.from_dict({"linger.ms": 5, "queue.buffering.max.ms": 6})


def test_every_dotted_name_maps_to_a_setting():
    fields = set(ProducerConfig.__dataclass_fields__)
    assert set(DOTTED_NAMES.values()) <= fields


def test_producer_from_config():
    producer = Producer.from_config({"bootstrap.servers": "h:1", "linger.ms": 2, "enable.idempotence": False})
    assert producer.config.linger_ms == 2 and producer.config.idempotent is False
    assert producer.config.bootstrap_list == [("h", 1)]


# -- idempotence ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [dict(acks=1), dict(acks=0), dict(max_in_flight_requests_per_connection=6),
                                      dict(retries=0)])
def test_defaulted_idempotence_is_quietly_off_on_conflict(settings):
    config = ProducerConfig(**settings)
    assert config.enable_idempotence is None and config.idempotent is False


@pytest.mark.parametrize("settings, message", [
    (dict(acks=1), r"enable_idempotence=True conflicts with acks=1 \(idempotence needs acks='all'\)"),
    (dict(acks=0), r"conflicts with acks=0"),
    (dict(max_in_flight_requests_per_connection=6), r"max_in_flight_requests_per_connection=6 .*at most 5"),
    (dict(retries=0), r"retries=0 \(idempotence needs retries\)"),
])
def test_explicit_idempotence_conflict_is_an_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        ProducerConfig(enable_idempotence=True, **settings)


def test_idempotence_explicit_and_off():
    assert ProducerConfig(enable_idempotence=True).idempotent is True
    assert ProducerConfig(enable_idempotence=False).idempotent is False
    assert ProducerConfig(enable_idempotence=False, acks=1).idempotent is False
    assert ProducerConfig(max_in_flight_requests_per_connection=5).idempotent is True


def test_transactional_id_needs_idempotence():
    with pytest.raises(ConfigError, match="transactional_id needs enable_idempotence"):
        ProducerConfig(transactional_id="tx", enable_idempotence=False)
    with pytest.raises(ConfigError, match="transactional_id needs idempotence, which conflicts with acks=1"):
        ProducerConfig(transactional_id="tx", acks=1)


def test_transactional_id_and_timeout():
    config = ProducerConfig(transactional_id="tx-1")
    assert config.idempotent and config.transaction_timeout_ms == 60000  # Java's default
    config = ProducerConfig.from_dict({"transactional.id": "tx-2", "transaction.timeout.ms": "5000"})
    assert (config.transactional_id, config.transaction_timeout_ms) == ("tx-2", 5000)
    for bad in ("", 5):
        with pytest.raises(ConfigError, match="transactional_id must be a non-empty str"):
            ProducerConfig(transactional_id=bad)
    with pytest.raises(ConfigError, match="transaction_timeout_ms"):
        ProducerConfig(transactional_id="tx", transaction_timeout_ms=0)


# -- delivery_timeout_ms >= linger_ms + request_timeout_ms (the Java client's rule) -----------------------

@pytest.mark.parametrize("delivery, linger, request_timeout", [(5000, 5, 30000), (30004, 5, 30000), (1000, 0.5, 1000),
                                                       (2999, 0, 3000)])
def test_delivery_timeout_below_linger_plus_request_timeout_is_refused(delivery, linger, request_timeout):
    with pytest.raises(ConfigError) as caught:
        ProducerConfig(delivery_timeout_ms=delivery, linger_ms=linger, request_timeout_ms=request_timeout)
    text = str(caught.value)
    assert f"delivery_timeout_ms ({delivery})" in text
    assert f"linger_ms + request_timeout_ms ({linger} + {request_timeout} = {linger + request_timeout})" in text


@pytest.mark.parametrize("delivery, linger, request_timeout", [(30005, 5, 30000), (3000, 0, 3000), (1001, 0.5, 1000)])
def test_delivery_timeout_at_or_above_linger_plus_request_timeout_is_accepted(delivery, linger, request_timeout):
    config = ProducerConfig(delivery_timeout_ms=delivery, linger_ms=linger, request_timeout_ms=request_timeout)
    assert config.delivery_timeout_ms == delivery


def test_delivery_timeout_rule_applies_to_dotted_names():
    with pytest.raises(ConfigError, match=r"delivery_timeout_ms \(9000\) must be at least linger_ms \+ "
                                          r"request_timeout_ms \(5 \+ 10000 = 10005\)"):
        ProducerConfig.from_dict({"message.timeout.ms": "9000", "request.timeout.ms": "10000"})


def test_defaulted_delivery_timeout_is_raised_to_linger_plus_request_timeout():
    """As in the Java client, only an explicit value is an error; the default makes room."""
    assert ProducerConfig().delivery_timeout_ms == 120000
    assert ProducerConfig(linger_ms=60000, request_timeout_ms=90000).delivery_timeout_ms == 150000
    assert ProducerConfig(linger_ms=0.5, request_timeout_ms=120000).delivery_timeout_ms == 120001


@pytest.mark.parametrize("value", [0, -1, "5000", 1.5, True])
def test_delivery_timeout_must_be_a_positive_int(value):
    with pytest.raises(ConfigError, match=r"delivery_timeout_ms must be an int >= 1"):
        ProducerConfig(delivery_timeout_ms=value)


def test_producer_settings_names_every_init_field_of_the_config():
    # ProducerSettings types Producer's **config keywords; bootstrap_servers is Producer's own parameter.
    init_fields = {f.name for f in dataclasses.fields(ProducerConfig) if f.init}
    assert set(ProducerSettings.__annotations__) == init_fields - {"bootstrap_servers"}
    assert ProducerSettings.__required_keys__ == frozenset()  # every keyword has a default


def test_producer_settings_types_match_the_config_where_the_config_is_precise():
    # Where the dataclass holds the raw value as Any (acks, partitioner, interceptors, ...) the TypedDict
    # spells out the accepted forms; elsewhere the two must say the same (annotations are strings here).
    fields = {f.name: f.type for f in dataclasses.fields(ProducerConfig) if f.init}
    compared = 0
    for name, annotation in ProducerSettings.__annotations__.items():
        if "Any" in fields[name]:
            continue
        # TypedDict wraps string annotations in ForwardRef; the dataclass keeps the string.
        assert annotation.__forward_arg__ == fields[name], name
        compared += 1
    assert compared >= 25
