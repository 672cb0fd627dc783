"""The demo shop's own search: text relevance, the default order of its results.

The engine then ranks those results for the visitor (the page asks the
`search_results` placement to rank exactly them, `data-intently-items`); this is the
order a visitor sees when nothing is known of them, or when the tag does not answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from intently.catalog.items import Item
from intently.web.demo.catalog import BY_ID

MAX_RESULTS = 48
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case words, each without a plural "s" (shoes -> shoe)."""
    found = []
    for word in _WORD.findall(text.lower()):
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        found.append(word)
    return found


def _fields(item: Item) -> list[tuple[float, list[str]]]:
    category = BY_ID.get(item.leaf_category or "")
    description = item.attributes.get("description")
    return [
        (3.0, words(item.title or "")),
        (2.0, words(item.brand or "")),
        (2.0, words(category.name if category else item.leaf_category or "")),
        (1.0, words(" ".join(item.tags))),
        (0.5, words(description if isinstance(description, str) else "")),
    ]


def score(query: list[str], item: Item) -> float:
    """Each query word scores the best field it is found in (a word of the field, or the
    start of one for words of three letters or more); every word must be found."""
    total = 0.0
    fields = _fields(item)
    for word in query:
        best = 0.0
        for weight, found in fields:
            if any(w == word or (len(word) >= 3 and w.startswith(word)) for w in found):
                best = max(best, weight)
        if best == 0.0:
            return 0.0
        total += best
    return total


def search(items: Iterable[Item], text: str, limit: int = MAX_RESULTS) -> list[Item]:
    """The items matching `text`, the most relevant first (ties: the better rated, then
    by title), at most `limit`."""
    query = words(text)[:8]
    if not query:
        return []
    scored = [(score(query, item), item) for item in items if item.available]
    matching = [(s, item) for s, item in scored if s > 0]

    def rating(item: Item) -> float:
        value = item.attributes.get("rating")
        return float(value) if isinstance(value, int | float) else 0.0

    matching.sort(key=lambda pair: (-pair[0], -rating(pair[1]), pair[1].title or pair[1].id))
    return [item for _, item in matching[:limit]]
