"""`intently catalog import FILE`: items from JSON Lines or CSV, each checked on its own.

JSON Lines: one item object per line, as `POST /v1/catalog/items` takes them. CSV: a
header naming the columns; `id`, `title`, `category` (a path, "Shoes > Running"), `brand`,
`price`, `stock`, `tags` ("a|b"), `image`, `url` and `active` (true/false) are the item's
fields, any other column becomes an attribute (a string). Empty cells are absent fields.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intently.catalog.items import Item, decode_item

_LIST_COLUMNS = {"category": ">", "tags": "|"}
_FIELDS = {"id", "title", "category", "brand", "price", "stock", "tags", "image", "url", "active"}


def read_items(path: Path) -> Iterator[tuple[int, Item | None, str | None]]:
    """(line, item, None) for each valid line, (line, None, why) for the others."""
    suffix = path.suffix.lower()
    # utf-8-sig: spreadsheets write a byte-order mark first.
    with path.open(newline="", encoding="utf-8-sig", errors="strict") as handle:
        if suffix == ".csv":
            rows = csv.DictReader(handle)
            if rows.fieldnames is None or "id" not in rows.fieldnames:
                yield 1, None, "the CSV header must name an id column"
                return
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except csv.Error as error:  # e.g. a cell past the csv module's limit
                    yield rows.line_num, None, str(error)
                    continue
                yield from _checked(rows.line_num, json.dumps(_from_csv(row)).encode())
        else:
            for line, text in enumerate(handle, start=1):
                if text.strip():
                    yield from _checked(line, text.encode())


def _checked(line: int, raw: bytes) -> Iterator[tuple[int, Item | None, str | None]]:
    item, error = decode_item(raw, None)
    if error is not None:
        yield line, None, f"{error.field}: {error.detail}"
    else:
        yield line, item, None


def _from_csv(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for column, value in row.items():
        if column is None or value is None or value == "":
            continue  # an extra cell past the header, or an empty one
        name = column.strip()
        if name not in _FIELDS:
            attributes[name] = value
        elif name in _LIST_COLUMNS:
            out[name] = [part.strip() for part in value.split(_LIST_COLUMNS[name]) if part.strip()]
        elif name in ("price", "stock"):
            out[name] = _number(value)
        elif name == "active":
            out[name] = value.strip().lower() not in ("false", "0", "no")
        else:
            out[name] = value
    if attributes:
        out["attributes"] = attributes
    return out


def _number(text: str) -> float | int | str:
    """A number if it reads as a finite one; otherwise the text, which validation then
    refuses naming the field."""
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
