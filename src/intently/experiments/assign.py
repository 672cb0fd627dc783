"""Assignment: which arm a visitor is in, from a hash of a salt and their profile id.

Deterministic and sticky without storage: the same (salt, unit) always lands in the same
place of [0, 1). The unit is the visitor's canonical profile id, or, before their first
event, the id their profile will get (context/identity.py derives it from the first
identity seen), so a visitor keeps their arm from their very first decide on.

In order, for each decision:

1. the global holdout (a share of all visitors, default 5%) gets the placement's default
   content, everywhere: no rules, no recommendations, no bandits;
2. a placement's own holdout (`holdout` in its definition) does the same there;
3. an experiment on the placement whose layer range and targeting include the visitor
   puts them in one of its variants, by its weights.

An identity merge changes the canonical id, and with it every hash. So that a person
does not flip variants when they sign in, a profile that takes over an id that was
exposed is from then on assigned as that id (an alias kept by the experiment log): every
hash (holdouts, layers, variants) reads the same unit as before, so the person keeps
every arm at once, and stays in one experiment of a layer. If the surviving profile had
itself been exposed to other arms, the person has now seen two: the analysis leaves
them out of those experiments (`multiple_exposures`).

A hash is keyed BLAKE2b, 64 bits: about half a microsecond (measured), where a hash
written in Python (GrowthBook's FNV-1a) took ten times that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_SCALE = 1.0 / 2.0**64


class Bucketer:
    """A salt's place in [0, 1) for any unit: uniform, independent across salts."""

    __slots__ = ("_keyed", "salt")

    def __init__(self, salt: str) -> None:
        self.salt = salt
        # (a BLAKE2b key is at most 64 bytes: a longer salt is hashed down to one)
        key = salt.encode()
        if len(key) > 64:
            key = hashlib.blake2b(key).digest()
        self._keyed = hashlib.blake2b(digest_size=8, key=key)

    def __call__(self, unit: str) -> float:
        hashed = self._keyed.copy()
        hashed.update(unit.encode())
        return int.from_bytes(hashed.digest(), "little") * _SCALE


def pick(position: float, cumulative: tuple[float, ...]) -> int:
    """The index of the share `position` falls in, shares given as cumulative bounds
    (the last one 1.0)."""
    for index, bound in enumerate(cumulative):
        if position < bound:
            return index
    return len(cumulative) - 1  # (rounding: the last bound summed to just under 1)


@dataclass(frozen=True)
class Arm:
    """Where a decision's visitor is: a holdout, or an experiment's variant."""

    label: str  # what the decision logs: "holdout", "holdout:<placement>", "<exp>:<variant>"
    experiment: str  # the experiment measuring it ("holdout" for the global holdout)
    variant: str
    default_content: bool  # serve the placement's default content only
    reason: str  # a sentence for the decision's reasons


class Holdout:
    """A share of visitors kept from personalization (the global one, or a placement's)."""

    def __init__(self, share: float, salt: str) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"holdout share must be in [0, 1), not {share}")
        self.share = share
        self._bucket = Bucketer(salt)
        self._last_unit: str | None = None
        self._last_held = False

    def holds(self, unit: str) -> bool:
        # A decide asks once per placement, and again for its exposure: the last unit's
        # answer is kept.
        if unit == self._last_unit:
            return self._last_held
        held = self.share > 0.0 and self._bucket(unit) < self.share
        self._last_unit, self._last_held = unit, held
        return held


@dataclass(frozen=True)
class Variants:
    """An experiment's traffic split, as assignment needs it."""

    experiment: str
    ids: tuple[str, ...]
    cumulative: tuple[float, ...]
    layer: Bucketer
    low: float
    high: float
    split: Bucketer

    @property
    def partial(self) -> bool:
        """Whether the experiment takes only part of its layer (else no layer hash)."""
        return self.low > 0.0 or self.high < 1.0

    def variant_of(self, unit: str) -> str | None:
        """The variant `unit` is in, or None when outside the experiment's range."""
        if self.partial and not self.low <= self.layer(unit) < self.high:
            return None
        return self.ids[pick(self.split(unit), self.cumulative)]
