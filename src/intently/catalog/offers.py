"""Offers and content variants: banners, calls to action, messages, discounts.

An offer carries the fields its template fills (`fields`: a headline, an image, a code),
an optional time window (`startsAt`, `endsAt`) and an optional eligibility rule written in
the segment language (`profile.purchases.count == 0 and session.exit_intent`), checked and
compiled when the offer is uploaded: an expression that does not parse or type-check
refuses that offer, with the position of the problem. Decisions choose among the offers
that are active, within their window and eligible for the visitor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from intently.catalog.uploads import EntryInvalid, judge_all, read_entries
from intently.clock import epoch_ms
from intently.context.profile import Profile
from intently.events.limits import check_free_form
from intently.events.schema import Id, Text
from intently.events.validate import FieldError
from intently.segments.fields import FieldCatalog
from intently.segments.lang import ExpressionError, compile_expression

MAX_OFFERS_PER_UPLOAD = 1000
OfferKind = Literal["banner", "cta", "message", "discount"]


class Offer(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    id: Id
    kind: OfferKind
    title: Text | None = None
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    eligibility: Annotated[str, Meta(max_length=2048)] | None = None
    active: bool = True


@dataclass(frozen=True)
class LiveOffer:
    """An offer with its window in epoch ms and its compiled eligibility rule."""

    offer: Offer
    starts_ms: int | None
    ends_ms: int | None
    matches: Callable[[Profile, int], bool] | None

    def open_at(self, now_ms: int) -> bool:
        return (
            self.offer.active
            and (self.starts_ms is None or self.starts_ms <= now_ms)
            and (self.ends_ms is None or now_ms < self.ends_ms)
        )

    def eligible(self, profile: Profile | None, now_ms: int) -> bool:
        """Open now, and its rule holds for the visitor (a visitor not seen yet meets only
        offers without a rule)."""
        if not self.open_at(now_ms):
            return False
        if self.matches is None:
            return True
        return profile is not None and self.matches(profile, now_ms)


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    return epoch_ms(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


def prepare(offer: Offer, catalog: FieldCatalog) -> LiveOffer:
    """Check the window and compile the rule; raises `ValueError` naming the problem."""
    starts, ends = _ms(offer.starts_at), _ms(offer.ends_at)
    if starts is not None and ends is not None and ends <= starts:
        raise EntryInvalid(["endsAt"], "must be after startsAt")
    matches = None
    if offer.eligibility is not None:
        try:
            matches = compile_expression(offer.eligibility, catalog).matches
        except ExpressionError as error:
            raise EntryInvalid(["eligibility"], str(error), "expression") from None
    return LiveOffer(offer, starts, ends, matches)


class _Upload(Struct):
    offers: Annotated[list[msgspec.Raw], Meta(max_length=MAX_OFFERS_PER_UPLOAD)]


class OfferUpload(Struct):
    """The body of `POST /v1/catalog/offers` (for the OpenAPI document)."""

    offers: Annotated[list[Offer], Meta(max_length=MAX_OFFERS_PER_UPLOAD)]


_offer = msgspec.json.Decoder(Offer)
_upload = msgspec.json.Decoder(_Upload)


def decode_offers(body: bytes, catalog: FieldCatalog) -> tuple[list[LiveOffer], list[FieldError]]:
    """`{"offers": [...]}`: the valid offers (checked and compiled), and the refused ones
    (raises `UploadError` when the body itself is unusable)."""

    def make(raw: msgspec.Raw) -> LiveOffer:
        offer = _offer.decode(raw)
        check_free_form(offer.fields, ["fields"])
        return prepare(offer, catalog)

    valid, errors = judge_all(read_entries(body, _upload, "offers"), "offers", make)
    return [live for _, live in valid], errors
