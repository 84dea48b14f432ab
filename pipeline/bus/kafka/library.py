"""kafka-python, imported in one place, past the deprecation warning its import raises."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # kafka-python 3.0.12 loads its protocol schemas at import time through
    # importlib.resources' legacy API, deprecated since Python 3.11. The warning is
    # attributed to importlib rather than kafka, so a "kafka.*" warning filter misses it
    # and strict settings (the test suite's "error") would fail this import.
    warnings.filterwarnings("ignore", r"(open|read)_text is deprecated", DeprecationWarning)
    import kafka.errors as kafka_errors
    from kafka import (
        ConsumerRebalanceListener,
        KafkaAdminClient,
        KafkaConsumer,
        KafkaProducer,
        OffsetAndMetadata,
        TopicPartition,
    )
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.net import KafkaNetClient
    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector

__all__ = [
    "ConfigResource",
    "ConfigResourceType",
    "ConsumerRebalanceListener",
    "KafkaAdminClient",
    "KafkaConnectionManager",
    "KafkaConsumer",
    "KafkaNetClient",
    "KafkaProducer",
    "NetworkSelector",
    "OffsetAndMetadata",
    "TopicPartition",
    "kafka_errors",
]
