"""Context features for the contextual policies: named values hashed into a fixed vector.

A visitor is described by whatever the session, the profile and the request say
(`device=mobile`, `country=DE`, `top_category=running`, `cart_value=120.0`). Names are not
known in advance and keep appearing, so they are hashed (the "hashing trick", Weinberger
et al. 2009) into `dimensions` slots with a sign, which keeps collisions unbiased. The hash
is BLAKE2b, stable across processes and restarts (Python's own `hash` of a string is not),
so a model saved with its features stays valid. Slot 0 is a constant 1.0 (the bias).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from hashlib import blake2b
from operator import itemgetter

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]
MAX_VALUE = 1e6  # numeric features are clipped to +-this
FeatureValue = str | float | int | bool | None


# A feature as hashed: its label (`name=value` for strings and booleans, the name for
# numbers), its slot and its signed value. The vector and the "weighed most" reasons of a
# decision are both made from it, so each feature is hashed once.
Hashed = list[tuple[str, int, float]]


# Labelled features remembered per hasher (a decision hashes dozens, and visitors share
# most: `device=mobile`, `segment:buyers=True`); forgotten all at once past this many.
_MAX_REMEMBERED = 65_536


class FeatureHasher:
    def __init__(self, dimensions: int = 32) -> None:
        if dimensions < 2:
            raise ValueError("dimensions must be at least 2 (the bias and one feature)")
        self.dimensions = dimensions
        # (name, value) of a one-hot feature -> its label, slot and sign: a lookup instead
        # of a label formatted and hashed again on every decision.
        self._one_hot: dict[tuple[str, str | bool], tuple[str, int, float]] = {}

    def vector(self, features: Mapping[str, FeatureValue]) -> Vector:
        """The hashed vector: `name=value` for strings and booleans (one-hot), `name`
        weighted by the value for numbers (clipped to +-MAX_VALUE; non-finite ones left
        out); None and empty strings are left out."""
        return self.vector_of(self.hashed(features))

    def hashed(self, features: Mapping[str, FeatureValue]) -> Hashed:
        """What `vector` adds up: each feature's label, slot and signed value."""
        dimensions = self.dimensions
        one_hot = self._one_hot
        found: Hashed = []
        for name, value in features.items():
            if value is None or value == "":
                continue
            if isinstance(value, bool | str):
                hashed = one_hot.get((name, value))
                if hashed is None:
                    label = f"{name}={value}"
                    hashed = (label, *_slot(label, dimensions))
                    if len(one_hot) >= _MAX_REMEMBERED:
                        one_hot.clear()
                    one_hot[name, value] = hashed
                found.append(hashed)
            else:
                try:
                    number = float(value)
                except OverflowError:  # an integer past the float range
                    continue
                if math.isfinite(number):
                    # Clipped: one absurd value must not swamp (or overflow) a model.
                    slot, sign = _slot(name, dimensions)
                    found.append((name, slot, sign * min(max(number, -MAX_VALUE), MAX_VALUE)))
        return found

    def vector_of(self, hashed: Hashed) -> Vector:
        """The vector of hashed features (slot 0, the bias, is 1.0)."""
        # Summed in a list, made an array once: numpy's cost per element write would be
        # most of the work for a few dozen features.
        out = [0.0] * self.dimensions
        out[0] = 1.0
        for _, slot, value in hashed:
            out[slot] += value
        return np.array(out)


def contributions(hashed: Hashed, weights: Vector) -> list[tuple[str, float]]:
    """What each hashed feature adds to a linear model's score `weights . x`, largest
    first: the "weighed most" of a decision. Features sharing a slot (a hash collision)
    each show the slot's weight."""
    slot_weights = weights.tolist()  # (Python floats: numpy's per-element access costs more)
    found = [(label, value * slot_weights[slot]) for label, slot, value in hashed]
    return sorted(found, key=itemgetter(1), reverse=True)  # (stable: equals keep their order)


@lru_cache(maxsize=65_536)
def _slot(key: str, dimensions: int) -> tuple[int, float]:
    digest = int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "little")
    # Slot 0 is the bias: features go to 1 .. dimensions-1; the top bit gives the sign.
    return 1 + digest % (dimensions - 1), 1.0 if digest >> 63 else -1.0
