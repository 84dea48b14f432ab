"""The encoder and chunker of an index version, whatever the settings' own model is.

During a migration one process serves versions of different models: the embedded
pipeline feeds the live and the building version, and ``eval`` and ``migrate status``
search both. Each version records its model (:class:`pipeline.versions.spec.IndexVersion`), so its
encoder is the settings' own when the fingerprints agree, else the recorded model, loaded
once per process and checked against the fingerprint the version was built with.
"""

from __future__ import annotations

from pipeline.config.settings import ChunkingSettings, Settings
from pipeline.core.chunking import Chunker
from pipeline.core.errors import ConfigError
from pipeline.encoding import Encoder
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.adapters import chunk_tokens, make_chunker
from pipeline.versions.spec import IndexVersion


class VersionEncoders:
    """Encoders by model fingerprint, made on first use."""

    def __init__(self, settings: Settings, default: Encoder) -> None:
        self._settings = settings
        self.default = default  # the settings' own model
        self._by_fingerprint: dict[str, Encoder] = {}

    def for_version(self, version: IndexVersion) -> Encoder:
        """``version``'s encoder; ConfigError when its model is gone or has changed."""
        if self.default.fingerprint == version.fingerprint:
            return self.default
        found = self._by_fingerprint.get(version.fingerprint)
        if found is None:
            found = self._load(version)
            self._by_fingerprint[version.fingerprint] = found
        return found

    def _load(self, version: IndexVersion) -> Encoder:
        if not version.model:
            msg = (
                f"{version.label} was built with model {version.fingerprint} before versions recorded "
                f"their model, and model.name is another: set model.name (--model) to that model"
            )
            raise ConfigError(msg)
        settings = version.model_settings(self._settings.model)
        encoder = SentenceTransformerEncoder(settings, state_dir=self._settings.state_dir)
        if encoder.fingerprint != version.fingerprint:
            msg = (
                f"{version.label} was built with {version.fingerprint}, but its model {version.model} "
                f"is now {encoder.fingerprint} (its files changed): restore them, or migrate to a new version"
            )
            raise ConfigError(msg)
        return encoder

    def chunker_for(self, version: IndexVersion) -> Chunker:
        """``version``'s chunker: its recorded chunking, else the settings' (older specs)."""
        settings = self._settings
        if version.chunk_tokens:
            chunking = ChunkingSettings(
                max_tokens=version.chunk_tokens, overlap_tokens=version.overlap_tokens
            )
            settings = settings.model_copy(update={"chunking": chunking})
        return make_chunker(self.for_version(version), settings)


def effective_chunking(encoder: Encoder, settings: Settings) -> tuple[int, int]:
    """(tokens, overlap) the settings' chunker cuts with for ``encoder`` (what a version records)."""
    return chunk_tokens(encoder, settings), settings.chunking.overlap_tokens


def full_dims(encoder: Encoder) -> int:
    """The model's output size, asked of the model (one short encode)."""
    return int(encoder.encode_documents(["dimension probe"]).shape[1])
