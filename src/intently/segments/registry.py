"""Segment definitions: from a config file read at start-up, and from the API.

Definitions from the config file are the operator's and read-only through the API;
definitions made through the API are kept in `segments.json` in the data dir (written
atomically), so they survive a restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from intently.configfile import ConfigError, read_mapping, save_atomically
from intently.segments.fields import FieldCatalog
from intently.segments.lang import MAX_LENGTH, Compiled, ExpressionError, compile_expression

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class SegmentSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A segment as written: a boolean expression over profile, session and context
    fields; optionally a webhook URL told of every entry and exit."""

    expression: Annotated[str, Meta(min_length=1, max_length=MAX_LENGTH)]
    description: Annotated[str, Meta(max_length=1000)] | None = None
    webhook: Annotated[str, Meta(max_length=2048, pattern=r"^https?://")] | None = None


class Segment(Struct, omit_defaults=True):
    name: str
    expression: str
    source: str  # "config" or "api"
    description: str | None = None
    webhook: str | None = None


def valid_name(name: str) -> bool:
    return _NAME.match(name) is not None


class SegmentRegistry:
    def __init__(self, catalog: FieldCatalog, data_dir: Path, config_file: Path | None) -> None:
        self.catalog = catalog
        self._api_file = data_dir / "segments.json"
        self._segments: dict[str, tuple[Segment, Compiled]] = {}
        if config_file is not None:
            self._load_config(config_file)
        if self._api_file.exists():
            stored = msgspec.json.decode(self._api_file.read_bytes(), type=dict[str, SegmentSpec])
            for name, spec in stored.items():
                if name not in self._segments:
                    self._put(name, spec, "api")

    def __iter__(self) -> Iterator[tuple[Segment, Compiled]]:
        return iter(list(self._segments.values()))

    def __len__(self) -> int:
        return len(self._segments)

    def get(self, name: str) -> Segment | None:
        found = self._segments.get(name)
        return None if found is None else found[0]

    def define(self, name: str, spec: SegmentSpec) -> tuple[Segment, Compiled]:
        """Add or replace an API segment; raises `ExpressionError` (nothing changes)."""
        entry = self._put(name, spec, "api")
        self._save()
        return entry

    def delete(self, name: str) -> bool:
        if name not in self._segments:
            return False
        del self._segments[name]
        self._save()
        return True

    def _put(self, name: str, spec: SegmentSpec, source: str) -> tuple[Segment, Compiled]:
        compiled = compile_expression(spec.expression, self.catalog)
        segment = Segment(name, spec.expression, source, spec.description, spec.webhook)
        self._segments[name] = (segment, compiled)
        return segment, compiled

    def _save(self) -> None:
        api = {
            segment.name: SegmentSpec(segment.expression, segment.description, segment.webhook)
            for segment, _ in self._segments.values()
            if segment.source == "api"
        }
        save_atomically(self._api_file, api)

    def _load_config(self, path: Path) -> None:
        """`segments:` mapping names to specs, in YAML (or JSON, which is YAML)."""
        for name, value in read_mapping(path, "segments", "segments").items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigError(f"{path}: segment name {name!r} must match {_NAME.pattern}")
            try:
                spec = msgspec.convert(value, SegmentSpec)
                self._put(name, spec, "config")
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{path}: segment {name!r}: {exc}") from None
            except ExpressionError as exc:
                raise ConfigError(f"{path}: segment {name!r}: {exc}") from None
