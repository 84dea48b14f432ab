"""Where each setting came from: the sources of :meth:`Settings.load`, one layer each.

A layer holds what one source says (the TOML file, the ``EMBEDSTREAM_*`` environment,
keyword arguments, command-line flags), where it said each key (``file.toml:7``,
``env EMBEDSTREAM_INDEX__DIMS``, ``flag --index``), and the keys it names that no setting
has. Layers are merged field by field and validated once; each validation error is then
traced back to the highest layer that set its key, so the message can say where to fix it.
Every function takes the settings model, so nothing here depends on the schema's content.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, SecretStr
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsError

from pipeline.core.errors import ConfigError

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Override:
    """A value given on the command line: validated like every other source, and named in
    error messages the way the user spelled it (``source="flag --index"``)."""

    key: str  # dotted settings key, e.g. "index.name"
    value: Any
    source: str


@dataclass
class Layer:
    """What one source says: nested values, where each key was set, keys no setting has."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def origin(self, path: KeyPath) -> str | None:
        # A whole section given at once (a TOML table, a JSON env value) answers for its keys.
        for end in range(len(path), 0, -1):
            if (found := self.origins.get(path[:end])) is not None:
                return found
        return None


_TOML_AT_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)")
_TOML_TABLE = re.compile(r"^\s*\[\[?([^\]]+)\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(r"""^\s*([\w\-"'. ]+?)\s*=""")


def toml_layer(model: type[BaseModel], path: Path | None) -> Layer:
    if path is None:
        return Layer()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT_LINE.search(str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        raise ConfigError(f"{where}: invalid TOML: {_TOML_AT_LINE.sub('', str(exc))}") from exc
    lines = _toml_key_lines(text)
    origins = {p: f"{path}:{lines[p]}" if p in lines else str(path) for p in _key_paths(values)}
    unknown = [
        f"{'.'.join(p)}: no such setting ({origins[p]}){_hint(model, p)}"
        for p in _unknown_paths(model, values)
    ]
    return Layer(values, origins, unknown)


def _toml_key_lines(text: str) -> dict[KeyPath, int]:
    """Line of each key and table header; tomllib parses but does not say where."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    for number, line in enumerate(text.splitlines(), 1):
        if header := _TOML_TABLE.match(line):
            table = _dotted(header.group(1))
            lines.setdefault(table, number)
        elif key := _TOML_KEY.match(line):
            lines.setdefault(table + _dotted(key.group(1)), number)
    return lines


def _dotted(raw: str) -> KeyPath:
    return tuple(part.strip().strip("\"'") for part in raw.split("."))


def env_layer(model: type[BaseSettings], prefix: str, ignored: Collection[str]) -> Layer:
    """``EMBEDSTREAM_*`` variables, parsed by pydantic-settings' own env source; ``ignored``
    names variables that are not settings but are not unknown either (read by the CLI)."""
    try:
        values = EnvSettingsSource(model)()
    except SettingsError as exc:  # a section given as JSON that does not parse
        raise ConfigError(f"{exc} (from env)") from exc
    layer = Layer(values)
    skip = {name.upper() for name in ignored}
    for name in os.environ:
        if not name.upper().startswith(prefix):
            continue
        path = tuple(name[len(prefix) :].lower().split("__"))
        if field_at(model, path) is not None:
            layer.origins[path] = f"env {name}"
        elif name.upper() not in skip:
            layer.unknown.append(f"{name}: no such setting (from env){_env_hint(model, prefix, name)}")
    return layer


def values_layer(values: Mapping[str, Any], label: str) -> Layer:
    given = {k: v for k, v in values.items() if v is not None}
    return Layer(given, {p: f"{label} {'.'.join(p)}" for p in _key_paths(given)})


def flag_layer(flags: Sequence[Override]) -> Layer:
    layer = Layer()
    for flag in flags:
        path = tuple(flag.key.split("."))
        merge(layer.values, _nest(path, flag.value))
        layer.origins[path] = flag.source
    return layer


def _nest(path: KeyPath, value: Any) -> dict[str, Any]:
    nested: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        nested = {key: nested}
    return nested


def merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Field by field: a later source overrides single keys, never whole sections."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _key_paths(values: Mapping[str, Any], prefix: KeyPath = ()) -> Iterator[KeyPath]:
    for key, value in values.items():
        yield (*prefix, key)
        if isinstance(value, Mapping):
            yield from _key_paths(value, (*prefix, key))


def _section(annotation: Any) -> type[BaseModel] | None:
    """The settings section a field holds (``KafkaSettings``), or None for a plain value."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_at(model: type[BaseModel], path: KeyPath) -> Any | None:
    """The annotation of the setting at ``path``, or None when no setting is there."""
    annotation: Any = None
    current: type[BaseModel] | None = model
    for key in path:
        info = current.model_fields.get(key) if current is not None else None
        if info is None:
            return None
        annotation = info.annotation
        current = _section(annotation)
    return annotation


def _unknown_paths(
    model: type[BaseModel], values: Mapping[str, Any], prefix: KeyPath = ()
) -> Iterator[KeyPath]:
    for key, value in values.items():
        info = model.model_fields.get(key)
        if info is None:
            yield (*prefix, key)
        elif isinstance(value, Mapping) and (section := _section(info.annotation)) is not None:
            yield from _unknown_paths(section, value, (*prefix, key))


def _hint(model: type[BaseModel], path: KeyPath) -> str:
    section = model if len(path) == 1 else _section(field_at(model, path[:-1]))
    names = list(section.model_fields) if section is not None else []
    close = difflib.get_close_matches(path[-1], names, n=1)
    return f"; did you mean {'.'.join((*path[:-1], close[0]))}?" if close else ""


def _env_hint(model: type[BaseModel], prefix: str, name: str) -> str:
    close = difflib.get_close_matches(name.upper(), _env_names(model, prefix), n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close else ""


def _env_names(model: type[BaseModel], prefix: str) -> list[str]:
    names = []
    for key, info in model.model_fields.items():
        section = _section(info.annotation)
        name = f"{prefix}{key.upper()}"
        names.extend(_env_names(section, name + "__") if section is not None else [name])
    return names


def describe(model: type[BaseModel], error: ErrorDetails, layers: Sequence[Layer]) -> str:
    """``index.dims: Input should be a valid integer, got 'abc' (from env EMBEDSTREAM_INDEX__DIMS)``"""
    path = _settings_path(model, error["loc"])
    origin = next((o for layer in reversed(layers) if (o := layer.origin(path)) is not None), "defaults")
    value = error.get("input")
    shown = isinstance(value, str | int | float) and not _is_secret(model, path)
    got = f", got {value!r}" if shown else ""
    return f"{'.'.join(path) or 'settings'}: {error['msg']}{got} (from {origin})"


def _settings_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> KeyPath:
    """The settings key of an error location (pydantic appends union branches and indices)."""
    path: KeyPath = ()
    for part in loc:
        if not isinstance(part, str) or field_at(model, (*path, part)) is None:
            break
        path = (*path, part)
    return path


def _is_secret(model: type[BaseModel], path: KeyPath) -> bool:
    annotation = field_at(model, path)
    return annotation is SecretStr or SecretStr in get_args(annotation)


def truthy(value: object) -> bool:
    """Whether a raw (unvalidated) value means "on", as pydantic's bool parsing would."""
    return value is True or str(value).strip().lower() in {"1", "true", "yes", "on", "t", "y"}
