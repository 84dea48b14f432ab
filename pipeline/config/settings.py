"""Every knob, parsed once at the entry point (CLI) from flags, env and a TOML file.

Precedence, highest first: explicit overrides (CLI flags) > ``EMBEDSTREAM_*`` environment
(nested with ``__``, e.g. ``EMBEDSTREAM_KAFKA__BOOTSTRAP``) > the TOML file
(``--config``, ``EMBEDSTREAM_CONFIG`` or ``./embedstream.toml``) > defaults.

:meth:`Settings.load` reads each source itself and validates their merge once, so every
problem is reported on one line naming the key and where its value came from (a flag, an
environment variable, ``file.toml:line``), and keys no setting has are reported too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.config.layers import (
    Layer,
    Override,
    describe,
    env_layer,
    flag_layer,
    merge,
    toml_layer,
    truthy,
    values_layer,
)
from pipeline.config.tls import ca_problem, client_cert_problem
from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = Path("embedstream.toml")
ENV_PREFIX = "EMBEDSTREAM_"
# Read by the CLI before any setting (it says where the settings live), not a setting itself.
CONFIG_ENV = "EMBEDSTREAM_CONFIG"


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
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "Precision of the model's math (vectors are float32 either way): auto = bfloat16 on CPUs "
            "with AMX-BF16/AVX512-BF16, float16 on CUDA, else float32. Not part of the model "
            "fingerprint: vectors agree with float32 within cosine 0.9999 (README, Benchmarks)"
        ),
    )


class ChunkingSettings(BaseModel):
    max_tokens: int | None = Field(
        None, ge=16, description="Chunk size in model tokens (unset: 200, or less if the model reads less)"
    )
    # 200/24 by measurement (issue 20): on 600 Debian manual pages the least model work within 0.5
    # nDCG@10 points of the best that also retrieves as well as LangChain's index() (README,
    # "Chunking defaults"; ops/bench/chunking.py, ops/bench/langchain_compare.py).
    overlap_tokens: int = Field(24, ge=0, description="Tokens repeated from the previous chunk")


class LimitsSettings(BaseModel):
    max_doc_bytes: int = Field(
        2_000_000,
        ge=1,
        description="Larger documents are not indexed: files are skipped (too_large), events dead-lettered",
    )
    max_chunks_per_doc: int = Field(300, ge=1, description="More chunks go to the DLQ")


class IndexSettings(BaseModel):
    name: str = Field("docs", pattern=r"^[A-Za-z0-9_-]+$", description="Alias queried by search")
    dims: int | None = Field(None, ge=8, description="Matryoshka truncation (None = full)")
    datatype: Literal["float32", "float16", "uint8"] = "float32"
    quantization: Literal["none", "int8", "binary", "product"] = "int8"
    oversampling: float = Field(2.0, ge=1.0)
    rescore: bool = True
    # What `migrate promote` checks a new version against (BEIR format, see `embedstream eval`).
    eval_queries: Path | None = Field(None, description="BEIR queries.jsonl that gates `migrate promote`")
    eval_qrels: Path | None = Field(None, description="BEIR qrels .tsv judging eval_queries")
    eval_margin: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest relative nDCG@10 loss vs the live version promote accepts"
    )
    gc_retention_hours: float = Field(
        24.0, ge=0.0, description="`migrate gc` drops versions unaliased at least this long ago"
    )


class StoreSettings(BaseModel):
    url: str | None = Field(None, description="Qdrant server URL (https:// for TLS); unset = embedded engine")
    api_key: SecretStr | None = Field(None, description="Qdrant API key (secret)")
    ca_file: Path | None = Field(None, description="PEM CA certificates for an https url with a private CA")
    allow_insecure_api_key: bool = Field(
        False, description="Allow sending api_key over plain http:// to a host that is not loopback"
    )
    timeout_s: float = 10.0
    max_request_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="Upserts and deletes are split into requests of at most this many JSON bytes",
    )
    # A Qdrant cluster's layout of each collection an index version creates (the points and
    # the __docs state alike); fixed when the collection is created. Unset: the server's
    # default (from its config, else 1). The embedded engine has one shard and ignores them.
    shard_number: int | None = Field(
        None,
        ge=1,
        description="Shards per collection, spread over the cluster's peers (unset: the server's default)",
    )
    replication_factor: int | None = Field(
        None,
        ge=1,
        description="Copies of each shard on distinct peers; 2 survives losing a peer (unset: the server's)",
    )
    write_consistency_factor: int | None = Field(
        None,
        ge=1,
        description="Replicas that must apply a write before it is acknowledged, at most replication_factor; "
        "1 keeps writing while a peer is down (unset: the server's default, 1)",
    )

    @field_validator("ca_file")
    @classmethod
    def _ca_usable(cls, value: Path | None) -> Path | None:
        if value is not None and (problem := ca_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("write_consistency_factor")
    @classmethod
    def _within_replication(cls, value: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("replication_factor")
        if value is not None and replicas is not None and value > replicas:
            raise ValueError(
                f"exceeds store.replication_factor={replicas}: a shard has only {replicas} replicas to ack"
            )
        return value


SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


class CacheSettings(BaseModel):
    shared: bool = Field(
        False,
        description="Share the embedding cache between hosts: a collection in the Qdrant server of "
        "store.url (required), behind the local SQLite cache",
    )
    collection_prefix: str = Field(
        "embedstream_cache",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Shared cache collections are <prefix>__<dims>, one per vector size",
    )


class SourcesSettings(BaseModel):
    """The source daemons (``embedstream source ...``)."""

    reconcile_every_s: float = Field(
        600.0,
        ge=0,
        description="Seconds between passes that reconcile with the index (deleting documents it holds "
        "that the source does not) under the mass-delete guard; needs store.url; 0: every pass",
    )
    allow_mass_delete: bool = Field(
        False, description="Let a reconciling pass delete more than half of the source's indexed documents"
    )


class KafkaSettings(BaseModel):
    """Brokers, topics, batching, and how the connection is secured.

    ``security_protocol`` decides which SASL and TLS settings apply: a SASL protocol
    requires a mechanism and credentials; with TLS, every file must exist and parse. Each
    problem is an error of its own key, so start-up reports all of them at once. Fields
    are declared in the order the checks read each other (``info.data``).
    """

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "embedstream"
    partitions: int = Field(6, ge=1)
    replication: int = Field(1, ge=1)
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="Topics' min.insync.replicas, at most replication: replicas that must hold a write "
        "before acks=all succeeds; 2 with replication 3 survives a broker loss (unset: the broker's default)",
    )
    batch_max_records: int = Field(256, ge=1)
    batch_max_wait_ms: int = Field(200, ge=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT, or SASL_SSL (SASL over TLS)"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, validate_default=True, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)"
    )
    sasl_username: str | None = Field(None, validate_default=True, description="SASL user (SASL_* only)")
    sasl_password: SecretStr | None = Field(None, validate_default=True, description="SASL password (secret)")
    ssl_cafile: Path | None = Field(
        None, description="PEM CA certificates the brokers' certificates chain to (unset: the system's)"
    )
    ssl_check_hostname: bool = Field(True, description="Require broker certificates to name the host dialed")
    ssl_keyfile: Path | None = Field(None, description="PEM key of ssl_certfile when not inside it (mTLS)")
    ssl_password: SecretStr | None = Field(None, description="Password of an encrypted ssl_keyfile (secret)")
    ssl_certfile: Path | None = Field(
        None, validate_default=True, description="PEM client certificate for mutual TLS"
    )

    @field_validator("min_insync_replicas")
    @classmethod
    def _within_kafka_replication(cls, value: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("replication")
        if value is not None and replicas is not None and value > replicas:
            raise ValueError(
                f"exceeds kafka.replication={replicas}: no write could ever reach {value} in-sync replicas"
            )
        return value

    @field_validator("sasl_mechanism", "sasl_username", "sasl_password")
    @classmethod
    def _required_with_sasl(cls, value: object, info: ValidationInfo) -> object:
        protocol = info.data.get("security_protocol")
        secret = value.get_secret_value() if isinstance(value, SecretStr) else value
        if protocol in SASL_PROTOCOLS and secret in (None, ""):
            raise ValueError(f"required with security_protocol={protocol}")
        return value

    @field_validator("ssl_cafile", "ssl_keyfile")
    @classmethod
    def _file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or info.data.get("security_protocol") not in TLS_PROTOCOLS:
            return value
        problem = ca_problem(value) if info.field_name == "ssl_cafile" else _missing(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("ssl_certfile")
    @classmethod
    def _client_cert_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        data = info.data
        if data.get("security_protocol") not in TLS_PROTOCOLS or "ssl_keyfile" not in data:
            return value  # no TLS, or the key file already failed on its own
        if value is None:
            if data["ssl_keyfile"] is not None or data.get("ssl_password") is not None:
                raise ValueError("required when ssl_keyfile or ssl_password is set (mutual TLS)")
            return value
        problem = client_cert_problem(value, data["ssl_keyfile"], data.get("ssl_password"))
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _warn_unused(self) -> Self:
        # Not an error: a masked `config` or an embedded run may carry unused Kafka keys.
        for keys, protocols in ((_SASL_KEYS, SASL_PROTOCOLS), (_TLS_KEYS, TLS_PROTOCOLS)):
            unused = [name for name in keys if getattr(self, name) is not None]
            if unused and self.security_protocol not in protocols:
                log.warning(
                    "kafka.%s set, but security_protocol=%s ignores it; use %s",
                    ", kafka.".join(unused), self.security_protocol, " or ".join(protocols),
                )  # fmt: skip
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in TLS_PROTOCOLS


_SASL_KEYS = ("sasl_mechanism", "sasl_username", "sasl_password")
_TLS_KEYS = ("ssl_cafile", "ssl_keyfile", "ssl_password", "ssl_certfile")


def _missing(path: Path) -> str | None:
    return None if path.is_file() else f"{path} does not exist"


class HttpSettings(BaseModel):
    addr: str = Field(
        "127.0.0.1:0", description="host:port for /metrics, /healthz, /readyz (and the watcher's queries)"
    )
    token: SecretStr | None = Field(
        None, description="Required by the watcher's /search and /status; allows a non-loopback addr"
    )

    @field_validator("addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _, colon, port = value.rpartition(":")
        if not colon or not port.isdigit() or int(port) > 65535:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9100 (port 0: any free port)")
        return value


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


class Settings(BaseSettings):
    """Build with :meth:`load`, which reads the TOML file and the environment itself."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    state_dir: Path = Field(Path(".embedstream"), description="Embedded store, cache, checkpoints")
    log_level: LogLevel = Field("WARNING", description="DEBUG, INFO, WARNING or ERROR, in any case")
    strict: bool = Field(False, description="Unknown keys in the TOML file or EMBEDSTREAM_* env are errors")
    drain_timeout_s: float = Field(
        60.0, gt=0, description="Longest SIGTERM drain of a daemon or watch before it exits uncommitted"
    )
    model: ModelSettings = ModelSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    limits: LimitsSettings = LimitsSettings()
    index: IndexSettings = IndexSettings()
    store: StoreSettings = StoreSettings()
    cache: CacheSettings = CacheSettings()
    sources: SourcesSettings = SourcesSettings()
    kafka: KafkaSettings = KafkaSettings()
    http: HttpSettings = HttpSettings()

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        # Only a known name is upper-cased, so an error quotes what the user wrote.
        if isinstance(value, str) and value.upper() in LOG_LEVELS:
            return value.upper()
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load() reads the file and the environment itself, to know where each value came
        # from; the constructor only validates what it is given.
        return (init_settings,)

    @classmethod
    def load(
        cls,
        config_file: Path | None = None,
        *,
        flags: Sequence[Override] = (),
        known_env: Collection[str] = (),
        **overrides: Any,
    ) -> Settings:
        """Defaults < TOML file < ``EMBEDSTREAM_*`` env < ``overrides`` < ``flags``, validated once.

        ``overrides`` are keyword values from code (``None`` is ignored); ``known_env`` names
        ``EMBEDSTREAM_*`` variables that belong to the CLI rather than to settings. Raises
        :class:`ConfigError` with one line per problem; unknown keys are warnings, or
        problems too when ``strict`` is set.
        """
        layers = (
            toml_layer(cls, _config_path(config_file)),
            env_layer(cls, ENV_PREFIX, {CONFIG_ENV, *known_env}),
            values_layer(overrides, "argument"),
            flag_layer(flags),
        )
        return _validate(cls, layers)

    @property
    def cache_path(self) -> Path:
        return self.state_dir / "cache.sqlite"

    @property
    def qdrant_dir(self) -> Path:
        return self.state_dir / "qdrant"

    @property
    def index_home(self) -> Path:
        """The index's own files: sources' checkpoints and name bindings, backfill scratch."""
        return self.state_dir / "indexes" / self.index.name

    def masked_json(self) -> str:
        """The effective configuration with secrets shown as ``**********``."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def _validate(model: type[Settings], layers: Sequence[Layer]) -> Settings:
    merged: dict[str, Any] = {}
    for layer in layers:
        merge(merged, layer.values)
    # Decided before validation, so unknown keys are reported even when a value is invalid.
    strict = truthy(merged.get("strict"))
    unknown = [line for layer in layers for line in layer.unknown]
    if not strict:
        for line in unknown:
            log.warning("%s; ignored (strict mode makes this an error)", line)
    try:
        settings = model.model_validate(merged)
    except ValidationError as exc:
        problems = [describe(model, error, layers) for error in exc.errors()]
        raise ConfigError(*problems, *(unknown if strict else [])) from exc
    if strict and unknown:
        raise ConfigError(*unknown)
    return settings


def _config_path(config_file: Path | None) -> Path | None:
    # The one environment read outside the sources: it chooses where the other settings live.
    raw = os.environ.get(CONFIG_ENV)
    path = config_file or (Path(raw) if raw else None)
    if path is None:
        return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None
    if path.is_dir():
        raise ConfigError(
            f"config file {path} is a directory: give the TOML file in it (--config DIR/embedstream.toml)"
        )
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return path
