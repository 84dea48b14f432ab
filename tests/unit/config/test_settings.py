"""Unit tests for settings precedence (flags > env > TOML > defaults), secret masking, and
configuration errors that name the key and where its value came from."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from pipeline.config.layers import Override
from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError

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
    assert s.log_level == "WARNING"
    assert s.strict is False
    assert s.http.addr == "127.0.0.1:0"
    assert s.http.token is None
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


def problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> tuple[str, ...]:
    return excinfo.value.problems


def test_wrong_type_in_env_names_the_key_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """EMBEDSTREAM_INDEX__DIMS=abc is one problem line naming index.dims, the value and the variable."""
    monkeypatch.setenv("EMBEDSTREAM_INDEX__DIMS", "abc")
    with pytest.raises(ConfigError) as excinfo:
        Settings.load()
    (line,) = problems(excinfo)
    assert line.startswith("index.dims: ")
    assert "'abc'" in line
    assert line.endswith("(from env EMBEDSTREAM_INDEX__DIMS)")


def test_wrong_values_in_toml_name_file_and_line(tmp_path: Path) -> None:
    """Each invalid TOML value is its own problem line, naming the key and file:line."""
    path = tmp_path / "bad.toml"
    path.write_text('state_dir = "s"\n\n[index]\nname = "ok"\ndims = "many"\nquantization = "pq"\n')
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(path)
    lines = problems(excinfo)
    assert len(lines) == 2
    assert lines[0].startswith("index.dims: ")
    assert lines[0].endswith(f"(from {path}:5)")
    assert lines[1].startswith("index.quantization: ")
    assert lines[1].endswith(f"(from {path}:6)")


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    """A TOML syntax error is a ConfigError pointing at file:line, not a parser traceback."""
    path = tmp_path / "broken.toml"
    path.write_text('log_level = "INFO"\n[index\nname = "x"\n')
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(path)
    (line,) = problems(excinfo)
    assert line.startswith(f"{path}:2: invalid TOML")


def test_flag_overrides_are_validated_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag value gets the same validation as env/TOML, and the error names the flag."""
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(flags=[Override("index.name", "../../x", "flag --index")])
    (line,) = problems(excinfo)
    assert line.startswith("index.name: ")
    assert line.endswith("(from flag --index)")


def test_flags_beat_env_field_by_field(monkeypatch: pytest.MonkeyPatch, toml_file: Path) -> None:
    """A flag overrides the env value of its own key only; TOML and env still fill the rest."""
    monkeypatch.setenv("EMBEDSTREAM_INDEX__NAME", "envindex")
    monkeypatch.setenv("EMBEDSTREAM_INDEX__DIMS", "64")
    s = Settings.load(toml_file, flags=[Override("index.name", "flagindex", "flag --index")])
    assert s.index.name == "flagindex"
    assert s.index.dims == 64
    assert s.index.quantization == "binary"


@pytest.mark.parametrize("source", ["env", "toml", "flag"])
def test_log_level_names_are_case_insensitive(
    source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """debug, Debug and DEBUG are the same level whether from env, TOML or a flag."""
    path = tmp_path / "level.toml"
    path.write_text('log_level = "Debug"\n' if source == "toml" else "")
    if source == "env":
        monkeypatch.setenv("EMBEDSTREAM_LOG_LEVEL", "debug")
    flags = [Override("log_level", "dEbUg", "flag --log-level")] if source == "flag" else []
    assert Settings.load(path, flags=flags).log_level == "DEBUG"


def test_unknown_keys_are_warnings_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A misspelt TOML key or EMBEDSTREAM_* variable is logged with a suggestion; loading succeeds."""
    path = tmp_path / "typo.toml"
    path.write_text("[index]\ndimz = 64\n")
    monkeypatch.setenv("EMBEDSTREAM_KAFKA_BOOTSTRAP", "x:1")
    with caplog.at_level(logging.WARNING, logger="pipeline.config.settings"):
        s = Settings.load(path)
    assert s.index.dims is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"index.dimz: no such setting ({path}:2); did you mean index.dims?" in w for w in warnings)
    assert any("EMBEDSTREAM_KAFKA_BOOTSTRAP" in w and "EMBEDSTREAM_KAFKA__BOOTSTRAP?" in w for w in warnings)


@pytest.mark.parametrize("how", ["toml", "env", "flag"])
def test_strict_makes_unknown_keys_errors(how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With strict set in TOML, env or by flag, each unknown key is a problem line of a ConfigError."""
    path = tmp_path / "strict.toml"
    path.write_text(("strict = true\n" if how == "toml" else "") + "[index]\ndimz = 64\n")
    monkeypatch.setenv("EMBEDSTREAM_NOPE", "1")
    if how == "env":
        monkeypatch.setenv("EMBEDSTREAM_STRICT", "true")
    flags = [Override("strict", True, "flag --strict")] if how == "flag" else []
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(path, flags=flags)
    lines = problems(excinfo)
    assert len(lines) == 2
    assert lines[0].startswith("index.dimz: no such setting")
    assert lines[1].startswith("EMBEDSTREAM_NOPE: no such setting")


def test_cli_owned_env_variables_are_not_unknown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Variables the CLI declares (known_env) and EMBEDSTREAM_CONFIG are never reported."""
    monkeypatch.setenv("EMBEDSTREAM_SEARCH_LIMIT", "5")
    with caplog.at_level(logging.WARNING, logger="pipeline.config.settings"):
        Settings.load(known_env={"EMBEDSTREAM_SEARCH_LIMIT"}, strict=True)
    assert not caplog.records


def test_secret_values_never_appear_in_errors(tmp_path: Path) -> None:
    """A secret of the wrong type is reported by key and file:line, without echoing the value."""
    path = tmp_path / "secret.toml"
    path.write_text("[http]\ntoken = 987654321\n")
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(path)
    (line,) = problems(excinfo)
    assert line.startswith("http.token: ")
    assert "987654321" not in line
    assert line.endswith(f"(from {path}:2)")


def test_http_token_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """http.token is a secret: masked_json shows that it is set, never its value."""
    monkeypatch.setenv("EMBEDSTREAM_HTTP__TOKEN", "tok-123456")
    s = Settings.load()
    assert s.http.token is not None
    assert "tok-123456" not in s.masked_json()


@pytest.mark.parametrize("addr", ["9100", "127.0.0.1:http", "127.0.0.1:70000"])
def test_http_addr_must_be_host_and_port(addr: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed http.addr is a configuration error at load, not a traceback at bind time."""
    monkeypatch.setenv("EMBEDSTREAM_HTTP__ADDR", addr)
    with pytest.raises(ConfigError) as excinfo:
        Settings.load()
    (line,) = problems(excinfo)
    assert line.startswith("http.addr: ")
    assert line.endswith("(from env EMBEDSTREAM_HTTP__ADDR)")
