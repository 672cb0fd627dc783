"""`intently eval sessions`: next-item prediction on click sessions, through the pipeline.

Files are tab-separated with a header `SessionId ItemId Time` (Unix seconds), as the
session-rec framework prepares YOOCHOOSE. Training clicks pass through the real pipeline
(validated, logged, applied to sessions and profiles; the recommenders learn from the
context stage) as `Product Viewed` events, in time order. Then the test clicks are
replayed in time order, each as a `Product Viewed` of its own visitor (test visitors are
kept apart from training ones); before a click that is not its session's first is
ingested, its item is predicted from that visitor's recent views as the recommenders
hold them, with every item seen in training as a candidate.

Protocols: `static` (the published one) freezes what the recommenders learned from the
training clicks; `prequential` keeps them learning from each test click after it was
predicted, as in production (a session is never its own neighbour). Either way a
session's own views are kept, and a session splits after 30 minutes without a view, as
the engine's sessions do.

HR@K is the share of predictions whose true item is among the top K, MRR@K the mean of
1/rank (0 past K). Only items with a positive score are ranked: an item no neighbour voted
for is not a hit, even when fewer than K items were scored.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from intently.config import Settings
from intently.engine import Engine
from intently.events.schema import Event, TrackEvent
from intently.events.validate import FieldError
from intently.recommend.blend import next_items
from intently.recommend.learn import LearnFromViews
from intently.recommend.sequential import SequentialRules
from intently.recommend.session_knn import SessionKNN

Protocol = Literal["static", "prequential"]
# vsknn+sr: the session kNN with sequential rules blended in (recommend/blend.py).
ALGORITHMS = ("vsknn+sr", "vsknn", "sr", "covisit", "trending", "popular")
PROTOCOLS: tuple[Protocol, ...] = ("static", "prequential")
_HEADER = ["SessionId", "ItemId", "Time"]
_BATCH = 2000
_MAX_ID = 200  # the product_id and anonymousId bounds (256) with room for our prefixes


class SessionFileError(ValueError):
    """A sessions file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Click:
    session: str
    item: str
    at: float  # Unix seconds


def read_clicks(path: Path) -> list[Click]:
    """The clicks of a sessions file, in file order."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise SessionFileError(f"{path}: {error.strerror}") from None
    clicks = []
    line = 1
    try:
        with handle:
            # Tab-separated values, no quoting: a quote is part of an id, and each line
            # is one click.
            rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows, None)
            if header is None or [name.strip() for name in header[:3]] != _HEADER:
                raise SessionFileError(
                    f"{path}: the first line must be the header {' '.join(_HEADER)}"
                )
            for row in rows:
                line = rows.line_num
                if row:
                    clicks.append(_click(row, path, line))
    except UnicodeDecodeError:
        raise SessionFileError(f"{path}, after line {line}: not UTF-8 text") from None
    except csv.Error as error:
        raise SessionFileError(f"{path}, line {line + 1}: {error}") from None
    return clicks


def _click(row: list[str], path: Path, line: int) -> Click:
    if len(row) < 3 or not row[0] or not row[1]:
        raise SessionFileError(f"{path}, line {line}: expected SessionId, ItemId, Time")
    if len(row[0]) > _MAX_ID or len(row[1]) > _MAX_ID:
        raise SessionFileError(f"{path}, line {line}: ids are at most {_MAX_ID} characters")
    try:
        at = float(row[2])
    except ValueError:
        raise SessionFileError(f"{path}, line {line}: Time {row[2]!r} is not a number") from None
    if not 0 <= at < 7_258_118_400:  # 1970 .. 2200, as events allow
        raise SessionFileError(f"{path}, line {line}: Time {row[2]} is out of range")
    return Click(row[0], row[1], at)


def _view(click: Click, visitor: str, number: str) -> Event:
    moment = datetime.fromtimestamp(click.at, UTC)
    return TrackEvent(
        event="Product Viewed",
        anonymous_id=visitor,
        properties={"product_id": click.item},
        message_id=number,
        timestamp=moment,
        received_at=moment,
    )


def _in_time_order(clicks: Sequence[Click]) -> list[Click]:
    """Clicks by time; a session's clicks at the same time keep their file order."""
    return sorted(clicks, key=lambda c: c.at)


def evaluate_sessions(
    train: Path,
    test: Path,
    *,
    k: int = 20,
    algorithm: str = "vsknn+sr",
    protocol: Protocol = "static",
    knn: SessionKNN | None = None,
    rules_weight: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float | int | str]:
    """Train on `train`, predict every next click of `test`; the figures as a dict."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    if k <= 0:
        raise ValueError("k must be positive")
    started = time.perf_counter()
    train_clicks = _in_time_order(read_clicks(train))
    test_clicks = _in_time_order(read_clicks(test))
    with tempfile.TemporaryDirectory(prefix="intently-eval-") as directory:
        # No HTTP here: keys are created in the throwaway data dir and never used.
        settings = Settings(data_dir=Path(directory), geoip_db=Path("off"))
        engine = Engine(settings)
        try:
            learner = LearnFromViews(knn or SessionKNN(), SequentialRules(), engine.context.rules)
            engine.context.hooks.append(learner)
            result = asyncio.run(
                _run(
                    engine,
                    learner,
                    train_clicks,
                    test_clicks,
                    k,
                    algorithm,
                    protocol,
                    rules_weight,
                    progress,
                )
            )
        finally:
            engine.close()
    return {
        "algorithm": algorithm,
        "protocol": protocol,
        "k": k,
        f"hr@{k}": result.hits / result.predictions if result.predictions else 0.0,
        f"mrr@{k}": result.reciprocal_ranks / result.predictions if result.predictions else 0.0,
        "predictions": result.predictions,
        "train_events": len(train_clicks),
        "test_events": len(test_clicks),
        "seconds": round(time.perf_counter() - started, 3),
    }


@dataclass
class _Tally:
    predictions: int = 0
    hits: int = 0
    reciprocal_ranks: float = 0.0


async def _run(
    engine: Engine,
    learner: LearnFromViews,
    train: Sequence[Click],
    test: Sequence[Click],
    k: int,
    algorithm: str,
    protocol: Protocol,
    rules_weight: float,
    progress: Callable[[int], None] | None,
) -> _Tally:
    pipeline = engine.pipeline
    for start in range(0, len(train), _BATCH):
        chunk = train[start : start + _BATCH]
        events = [
            (None, _view(click, f"train-{click.session}", f"train-{start + i}"))
            for i, click in enumerate(chunk)
        ]
        result = await pipeline.ingest(events, replay=True)
        _check_ingested(result.rejected)
        if progress is not None:
            progress(len(chunk))
    learner.learning = protocol == "prequential"
    # Candidates are the items seen in training, and only those.
    known = frozenset(learner.knn.items)
    weights = {"vsknn+sr": rules_weight, "vsknn": 0.0, "sr": 1.0}
    tally = _Tally()
    started: set[str] = set()
    # Test clicks in time order, across sessions: a prediction never sees a later click,
    # and in the prequential protocol every earlier one has been learned.
    for number, click in enumerate(test):
        # Test visitors are apart from training ones, even under the same SessionId.
        visitor = f"test-{click.session}"
        if click.session in started:
            current = learner.views(visitor)
            if algorithm == "popular":
                ranked = [i for i, _ in learner.popularity.most_common() if i in known][:k]
            elif algorithm in ("covisit", "trending"):
                found = (
                    learner.viewed_together.scores(current, k + len(current))
                    if algorithm == "covisit"
                    else learner.trending.top(k + 50, click.at * 1000)
                )
                ranked = [item for item, _ in found if item in known][:k]
            else:
                recommended = next_items(
                    learner.knn,
                    learner.sequential,
                    current,
                    k,
                    rules_weight=weights[algorithm],
                    neighbours_weight=0.0 if algorithm == "sr" else 1.0,
                    exclude_session=learner.session_of(visitor),
                    allowed=known if protocol == "prequential" else None,
                )
                ranked = [item for item, _ in recommended]
            tally.predictions += 1
            if click.item in ranked:
                tally.hits += 1
                tally.reciprocal_ranks += 1.0 / (ranked.index(click.item) + 1)
        started.add(click.session)
        result = await pipeline.ingest([(None, _view(click, visitor, f"test-{number}"))],
                                       replay=True)  # fmt: skip
        _check_ingested(result.rejected)
        if progress is not None:
            progress(1)
    return tally


def _check_ingested(rejected: Sequence[FieldError]) -> None:
    if rejected:
        first = rejected[0]
        raise SessionFileError(
            f"a click was refused by the pipeline: {first.field}: {first.detail}"
        )
