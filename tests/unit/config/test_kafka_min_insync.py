"""``kafka.min_insync_replicas``: validated against ``kafka.replication``, carried to every topic."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bus.kafka import KafkaTimeouts
from pipeline.bus.kafka.admin import MIN_INSYNC_REPLICAS, ClusterAdmin
from pipeline.bus.kafka.connection import Connection
from pipeline.config.settings import KafkaSettings, Settings
from pipeline.core.errors import ConfigError
from pipeline.runtime.topology import Topology


def test_unset_by_default_so_the_broker_default_applies(tmp_path: Path) -> None:
    settings = Settings.load(state_dir=tmp_path)
    assert settings.kafka.min_insync_replicas is None
    assert {spec.min_insync_replicas for spec in Topology(settings).topic_specs(1)} == {None}


def test_read_from_the_environment_and_given_to_every_topic(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EMBEDSTREAM_KAFKA__REPLICATION", "3")
    monkeypatch.setenv("EMBEDSTREAM_KAFKA__MIN_INSYNC_REPLICAS", "2")
    settings = Settings.load(state_dir=tmp_path)
    specs = Topology(settings).topic_specs(1)
    assert {(spec.replication, spec.min_insync_replicas) for spec in specs} == {(3, 2)}


def test_more_than_the_replication_factor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"min_insync_replicas.*exceeds kafka.replication=2"):
        Settings.load(state_dir=tmp_path, kafka={"replication": 2, "min_insync_replicas": 3})
    with pytest.raises(ConfigError, match="min_insync_replicas"):
        Settings.load(state_dir=tmp_path, kafka={"min_insync_replicas": 0})


def test_the_admin_creates_topics_with_it_only_when_set(tmp_path: Path) -> None:
    settings = KafkaSettings(replication=3, min_insync_replicas=2)
    connection = Connection(settings, "test", KafkaTimeouts())
    admin = ClusterAdmin(connection, translated=None, max_message_bytes=1 << 20)  # type: ignore[arg-type]
    specs = Topology(Settings.load(state_dir=tmp_path, kafka=settings.model_dump())).topic_specs(1)
    options = admin._topic_options(specs[0])
    assert options["replication_factor"] == 3
    assert options["configs"][MIN_INSYNC_REPLICAS] == "2"
    unset = Topology(Settings.load(state_dir=tmp_path, kafka={"replication": 3})).topic_specs(1)[0]
    assert MIN_INSYNC_REPLICAS not in admin._topic_options(unset)["configs"]
