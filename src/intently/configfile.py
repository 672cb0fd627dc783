"""Definitions kept in files: the operator's YAML, and what the API defined (JSON in the
data dir, replaced atomically so a crash leaves the old file or the new one, whole)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import yaml


class ConfigError(ValueError):
    pass


def save_atomically(path: Path, value: Any) -> None:
    """Write `value` as indented JSON to `path`: a temporary file, synced, renamed over."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(msgspec.json.format(msgspec.json.encode(value)))
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(path)


def read_mapping(path: Path, key: str, what: str) -> dict[Any, Any]:
    """The `key:` mapping of a YAML (or JSON, which is YAML) file of `what` definitions."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} file: {exc}") from None
    raw = document.get(key, {}) if isinstance(document, dict) else None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a '{key}:' mapping of id -> definition")
    return raw
