"""aiokprod: an asyncio-native Apache Kafka producer with a compiled hot path."""
from .config import ConfigError, ProducerConfig, ProducerSettings
from .interceptors import ProducerInterceptor, ProducerRecord
from .metadata import RecordMetadata
from .partitioner import DefaultPartitioner, RoundRobinPartitioner
from .producer import Producer

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DefaultPartitioner", "Producer", "ProducerConfig", "ProducerInterceptor", "ProducerRecord",
    "ProducerSettings", "RecordMetadata", "RoundRobinPartitioner", "__version__",
]
