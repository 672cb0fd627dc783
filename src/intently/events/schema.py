"""The wire format of events: the Segment spec, as typed structs decoded once at the edge.

Five event types share one envelope (ids, times, context) and are told apart by `type`:
`track` (an action, with `event` and `properties`), `page` and `screen` (a view), `identify`
(who the visitor is, with `traits`) and `alias` (`previousId` becomes `userId`).
Field names on the wire are camelCase, as Segment's libraries send them.

Free-form maps (`properties`, `traits`, parts of `context`) are typed as plain mappings here;
their size and depth are bounded by `intently.events.limits`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

# Bounds on strings. A browser sends nothing close to these; a client that does is broken
# or hostile, and gets a 4xx naming the field instead of filling the log.
Id = Annotated[str, Meta(min_length=1, max_length=256)]
Name = Annotated[str, Meta(max_length=256)]
Text = Annotated[str, Meta(max_length=2048)]
Url = Annotated[str, Meta(max_length=8192)]
FreeForm = dict[str, Any]


class _Wire(Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """Common options: camelCase on the wire, defaults left out when encoding. Events hold
    no reference cycles, so the garbage collector need not track them (`gc=False`): that
    keeps collections short when thousands of events are in flight."""


class PageContext(_Wire):
    """`context.page`: where the event happened."""

    url: Url | None = None
    path: Url | None = None
    referrer: Url | None = None
    title: Text | None = None
    search: Url | None = None


class Campaign(_Wire):
    """`context.campaign`: the UTM parameters of the visit (`utm_name` is `name`)."""

    source: Text | None = None
    medium: Text | None = None
    name: Text | None = None
    term: Text | None = None
    content: Text | None = None


class Consent(_Wire):
    """`context.consent` (Segment's consent spec): the purposes the visitor allowed or
    refused. intently reads `analytics`, `personalization` and `marketing`."""

    category_preferences: Annotated[dict[Name, bool], Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )


class Context(_Wire):
    """`context`: facts about the client. The ones intently reads are typed; the other
    fields of the Segment spec are kept as sent."""

    ip: Annotated[str, Meta(max_length=64)] | None = None
    user_agent: Url | None = None
    locale: Annotated[str, Meta(max_length=64)] | None = None
    timezone: Annotated[str, Meta(max_length=64)] | None = None
    page: PageContext | None = None
    campaign: Campaign | None = None
    referrer: FreeForm | None = None
    traits: FreeForm | None = None
    library: FreeForm | None = None
    app: FreeForm | None = None
    device: FreeForm | None = None
    os: FreeForm | None = None
    screen: FreeForm | None = None
    network: FreeForm | None = None
    location: FreeForm | None = None
    group_id: Id | None = None
    consent: Consent | None = None


class _Event(_Wire, tag_field="type", kw_only=True):
    """Fields every event type shares."""

    message_id: Id | None = None
    anonymous_id: Id | None = None
    user_id: Id | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    received_at: datetime | None = None
    context: Context | None = None
    integrations: FreeForm | None = None
    # sendBeacon cannot set headers, so browsers may put the write key in the body.
    # It is read by auth and never stored.
    write_key: Annotated[str, Meta(max_length=256)] | None = None


class TrackEvent(_Event, tag="track"):
    """An action the visitor took: `event` names it, `properties` describe it."""

    event: Annotated[str, Meta(min_length=1, max_length=256)]
    properties: FreeForm = msgspec.field(default_factory=dict)


class PageEvent(_Event, tag="page"):
    """A page view on a website."""

    name: Name | None = None
    category: Name | None = None
    properties: FreeForm = msgspec.field(default_factory=dict)


class ScreenEvent(_Event, tag="screen"):
    """A screen view in a mobile app."""

    name: Name | None = None
    category: Name | None = None
    properties: FreeForm = msgspec.field(default_factory=dict)


class IdentifyEvent(_Event, tag="identify"):
    """Who the visitor is: ties `anonymousId` to `userId` and records `traits`."""

    traits: FreeForm = msgspec.field(default_factory=dict)


class AliasEvent(_Event, tag="alias"):
    """Merges the identity `previousId` into `userId`."""

    previous_id: Id


Event = TrackEvent | PageEvent | ScreenEvent | IdentifyEvent | AliasEvent
EVENT_TYPES: tuple[type[Struct], ...] = (
    TrackEvent,
    PageEvent,
    ScreenEvent,
    IdentifyEvent,
    AliasEvent,
)
# Each event type's `type` on the wire ("track", "page", ...), by struct type.
EVENT_TAGS: dict[type, str] = {
    event_type: str(event_type.__struct_config__.tag) for event_type in EVENT_TYPES
}


class Batch(_Wire):
    """`{"batch": [...]}`: many events in one request. `sentAt`, `context` and `writeKey`
    given here apply to every event that lacks its own."""

    batch: list[msgspec.Raw]
    sent_at: datetime | None = None
    context: FreeForm | None = None
    write_key: Annotated[str, Meta(max_length=256)] | None = None


class BatchForSchema(_Wire):
    """The batch as documented in OpenAPI (the decoder reads events one by one instead)."""

    batch: Annotated[list[Event], Meta(max_length=500)]
    sent_at: datetime | None = None
    context: FreeForm | None = None
    write_key: Annotated[str, Meta(max_length=256)] | None = None
