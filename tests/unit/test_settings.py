"""Unit tests for settings precedence (overrides > env > TOML > defaults) and secret masking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import Settings

TOML = """
log_level = "DEBUG"

[kafka]
bootstrap = "toml-broker:9092"
topic_prefix = "tomlprefix"

[index]
name = "tomlindex"
quantization = "binary"

[chunking]
max_tokens = 128
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No EMBEDSTREAM_* variable from the outside and no ./embedstream.toml leak into a test."""
    for name in list(os.environ):
        if name.upper().startswith("EMBEDSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def toml_file(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "settings.toml"
    path.parent.mkdir()
    path.write_text(TOML)
    return path


def test_defaults() -> None:
    """Without env or file, every section has its documented default."""
    s = Settings.load()
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.kafka.topic_prefix == "embedstream"
    assert s.kafka.partitions == 6
    assert s.index.name == "docs"
    assert s.index.dims is None
    assert s.index.quantization == "int8"
    assert s.chunking.max_tokens is None  # unset: the chunker picks 200 or what the model reads
    assert s.chunking.overlap_tokens == 24
    assert s.limits.max_doc_bytes == 2_000_000
    assert s.limits.max_chunks_per_doc == 300
    assert s.model.name == "all-MiniLM-L6-v2"
    assert s.store.url is None
    assert s.store.api_key is None
    assert s.log_level == "INFO"
    assert s.state_dir == Path(".embedstream")
    assert s.cache_path == Path(".embedstream") / "cache.sqlite"


def test_env_overrides_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """EMBEDSTREAM_KAFKA__BOOTSTRAP and EMBEDSTREAM_INDEX__NAME set nested fields; others keep defaults."""
    monkeypatch.setenv("EMBEDSTREAM_KAFKA__BOOTSTRAP", "env-broker:9093")
    monkeypatch.setenv("EMBEDSTREAM_INDEX__NAME", "envindex")
    s = Settings.load()
    assert s.kafka.bootstrap == "env-broker:9093"
    assert s.index.name == "envindex"
    assert s.kafka.topic_prefix == "embedstream"
    assert s.index.quantization == "int8"


def test_toml_file_is_read(toml_file: Path) -> None:
    """A TOML file passed to Settings.load sets top-level and nested values."""
    s = Settings.load(toml_file)
    assert s.log_level == "DEBUG"
    assert s.kafka.bootstrap == "toml-broker:9092"
    assert s.kafka.topic_prefix == "tomlprefix"
    assert s.index.name == "tomlindex"
    assert s.index.quantization == "binary"
    assert s.chunking.max_tokens == 128
    assert s.chunking.overlap_tokens == 24


def test_default_toml_in_working_directory_is_read(tmp_path: Path) -> None:
    """Without an explicit path, ./embedstream.toml is used when present."""
    (tmp_path / "embedstream.toml").write_text('[index]\nname = "cwdindex"\n')
    assert Settings.load().index.name == "cwdindex"


def test_env_config_file_variable_is_used(monkeypatch: pytest.MonkeyPatch, toml_file: Path) -> None:
    """EMBEDSTREAM_CONFIG chooses the TOML file when no path is passed."""
    monkeypatch.setenv("EMBEDSTREAM_CONFIG", str(toml_file))
    assert Settings.load().index.name == "tomlindex"


def test_env_beats_toml_field_by_field(monkeypatch: pytest.MonkeyPatch, toml_file: Path) -> None:
    """An env variable wins over the TOML value of the same field, TOML still fills its siblings."""
    monkeypatch.setenv("EMBEDSTREAM_KAFKA__BOOTSTRAP", "env-broker:9093")
    monkeypatch.setenv("EMBEDSTREAM_INDEX__NAME", "envindex")
    s = Settings.load(toml_file)
    assert s.kafka.bootstrap == "env-broker:9093"
    assert s.index.name == "envindex"
    assert s.kafka.topic_prefix == "tomlprefix"
    assert s.index.quantization == "binary"


def test_explicit_overrides_beat_env_and_toml(monkeypatch: pytest.MonkeyPatch, toml_file: Path) -> None:
    """Keyword overrides win over env and TOML; None overrides are ignored."""
    monkeypatch.setenv("EMBEDSTREAM_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("EMBEDSTREAM_STATE_DIR", "/env/state")
    s = Settings.load(toml_file, log_level="ERROR", state_dir=None, kafka={"bootstrap": "flag-broker:1"})
    assert s.log_level == "ERROR"
    assert s.state_dir == Path("/env/state")
    assert s.kafka.bootstrap == "flag-broker:1"
    assert s.kafka.topic_prefix == "tomlprefix"


def test_masked_json_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """masked_json never prints a SecretStr value but still shows that one is set."""
    monkeypatch.setenv("EMBEDSTREAM_STORE__API_KEY", "supersecret")
    monkeypatch.setenv("EMBEDSTREAM_KAFKA__SASL_PASSWORD", "hunter2pw")
    s = Settings.load()
    assert s.store.api_key is not None
    assert s.store.api_key.get_secret_value() == "supersecret"
    out = s.masked_json()
    assert "supersecret" not in out
    assert "hunter2pw" not in out
    parsed = json.loads(out)
    assert parsed["store"]["api_key"] == "**********"
    assert parsed["kafka"]["sasl_password"] == "**********"
    assert "supersecret" not in repr(s)


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    """Pointing Settings.load at a file that does not exist is a ConfigError naming it."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        Settings.load(missing)


def test_missing_env_config_file_raises_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """EMBEDSTREAM_CONFIG naming a missing file is a ConfigError too."""
    monkeypatch.setenv("EMBEDSTREAM_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError):
        Settings.load()


def test_config_file_does_not_leak_into_later_loads(toml_file: Path) -> None:
    """The file chosen for one load is not used by the next load without a file."""
    assert Settings.load(toml_file).index.name == "tomlindex"
    assert Settings.load().index.name == "docs"
