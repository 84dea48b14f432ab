"""Every knob, parsed once at the entry point (CLI) from flags, env and a TOML file.

Precedence, highest first: explicit overrides (CLI flags) > ``EMBEDSTREAM_*`` environment
(nested with ``__``, e.g. ``EMBEDSTREAM_KAFKA__BOOTSTRAP``) > the TOML file
(``--config``, ``EMBEDSTREAM_CONFIG`` or ``./embedstream.toml``) > defaults.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = Path("embedstream.toml")
_config_file: ContextVar[Path | None] = ContextVar("embedstream_config_file", default=None)


class ModelSettings(BaseModel):
    name: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model: a local directory, or all-MiniLM-L6-v2 (bundled)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    query_prefix: str = Field("", description="Prepended to queries (e.g. 'query: ' for E5)")
    document_prefix: str = Field("", description="Prepended to chunks before encoding")
    max_seq_length: int | None = Field(None, description="Override the model's max tokens")
    token_budget: int | None = Field(
        None, ge=256, description="Padded tokens per encode batch (unset: 4096 on CPU, 65536 on CUDA)"
    )


class ChunkingSettings(BaseModel):
    max_tokens: int | None = Field(
        None, ge=16, description="Chunk size in model tokens (unset: 200, or less if the model reads less)"
    )
    overlap_tokens: int = Field(24, ge=0, description="Tokens repeated from the previous chunk")


class LimitsSettings(BaseModel):
    max_doc_bytes: int = Field(2_000_000, ge=1, description="Larger documents go to the DLQ")
    max_chunks_per_doc: int = Field(300, ge=1, description="More chunks go to the DLQ")


class IndexSettings(BaseModel):
    name: str = Field("docs", pattern=r"^[A-Za-z0-9_-]+$", description="Alias queried by search")
    dims: int | None = Field(None, ge=8, description="Matryoshka truncation (None = full)")
    datatype: Literal["float32", "float16"] = "float32"
    quantization: Literal["none", "int8", "binary"] = "int8"
    oversampling: float = Field(2.0, ge=1.0)
    rescore: bool = True


class StoreSettings(BaseModel):
    url: str | None = Field(None, description="Qdrant server URL; unset = embedded engine")
    api_key: SecretStr | None = None
    timeout_s: float = 10.0


class KafkaSettings(BaseModel):
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "embedstream"
    partitions: int = Field(6, ge=1)
    replication: int = Field(1, ge=1)
    batch_max_records: int = Field(256, ge=1)
    batch_max_wait_ms: int = Field(200, ge=0)
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None


class HttpSettings(BaseModel):
    addr: str = Field("127.0.0.1:0", description="host:port for /metrics, /healthz, /readyz")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDSTREAM_", env_nested_delimiter="__", extra="ignore")

    state_dir: Path = Field(Path(".embedstream"), description="Embedded store, cache, checkpoints")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    drain_timeout_s: float = Field(
        60.0, gt=0, description="Longest SIGTERM drain of a daemon or watch before it exits uncommitted"
    )
    model: ModelSettings = ModelSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    limits: LimitsSettings = LimitsSettings()
    index: IndexSettings = IndexSettings()
    store: StoreSettings = StoreSettings()
    kafka: KafkaSettings = KafkaSettings()
    http: HttpSettings = HttpSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file.get() or DEFAULT_CONFIG_FILE
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings; ``overrides`` are CLI flags, ``None`` values are ignored."""
        path = config_file or _env_config_file()
        if path is not None and not path.is_file():
            from pipeline.errors import ConfigError

            raise ConfigError(f"config file {path} does not exist")
        token = _config_file.set(path)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            _config_file.reset(token)

    @property
    def cache_path(self) -> Path:
        return self.state_dir / "cache.sqlite"

    @property
    def qdrant_dir(self) -> Path:
        return self.state_dir / "qdrant"

    def masked_json(self) -> str:
        """The effective configuration with secrets shown as ``**********``."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def _env_config_file() -> Path | None:
    # The one environment read outside pydantic: it chooses where the other settings live.
    raw = os.environ.get("EMBEDSTREAM_CONFIG")
    return Path(raw) if raw else None
