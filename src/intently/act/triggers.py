"""Triggered placements: when a profile enters a segment, decide a placement for it and
POST the decision to a sender (an email or push service).

A trigger is configured in the triggers file (`INTENTLY_TRIGGERS_FILE`, YAML):

    triggers:
      cart_abandoned:
        segment: cart_abandoners        # entering it fires the trigger
        placement: cart_recs            # what is decided for the person
        url: https://sender.example/intently   # where the decision is POSTed
        purpose: marketing              # the consent the person must have given (default)
        description: Remind of the cart

The decision is made by the engine's decider, as for `POST /v1/decide`: logged with its
propensities and reasons, and credited with the person's later clicks and orders within
the attribution window (through their profile, from any device). The payload
(`TriggerPayload`) carries the decision, the placement's template rendered with it
(`html`), the person's ids, the segment and trigger, and the times.

Delivery reuses the segment webhooks (segments/webhooks.py): the same signature
(`Intently-Signature`, with INTENTLY_WEBHOOK_SECRET), the same retries with backoff, the
same dead letters. `Intently-Delivery` is `<profile>:<trigger>:<log position>`, stable
across retries.

What fires: an entry caused by an event (not the evaluation of a new or changed segment
definition over everyone, which would message every current member at once), and only
an entry: a member does not enter again before it has left. The decision runs just after
the event is applied (on the event loop, after the ingesting request's own work), so a
slow sender never holds ingestion. A person who has refused the trigger's purpose is not
sent anything, and no decision is made for them (counted in `skipped_consent`); one
who refused personalization is in no segment at all.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from intently.act.decide import Decider, UnknownPlacements
from intently.act.placements import PlacementRegistry
from intently.act.templates import Template
from intently.act.wire import DecideBody, PlacementAsk, PlacementDecision
from intently.configfile import ConfigError, read_mapping
from intently.segments.membership import Transition
from intently.segments.registry import Segment, SegmentRegistry
from intently.segments.webhooks import Delivery

if TYPE_CHECKING:
    from intently.api.metrics import Metrics
    from intently.context.stage import ContextStage
    from intently.segments.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
Purpose = Literal["marketing", "personalization", "analytics"]


class TriggerSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    segment: Annotated[str, Meta(min_length=1, max_length=64)]
    placement: Annotated[str, Meta(min_length=1, max_length=64)]
    url: Annotated[str, Meta(max_length=2048, pattern=r"^https?://")]
    # Messages sent outside the site are marketing: the person must not have refused it.
    purpose: Purpose = "marketing"
    description: Annotated[str, Meta(max_length=1000)] | None = None


class Trigger(Struct, frozen=True):
    name: str
    spec: TriggerSpec


class TriggerPayload(Struct):
    """What the sender receives."""

    id: str  # the delivery id, also in the Intently-Delivery header
    type: str  # "placement.triggered"
    trigger: str
    segment: str
    placement: str
    profile_id: str
    user_id: str | None  # the person's latest userId, if known
    anonymous_id: str | None  # their latest anonymousId, if any
    entered_at_ms: int  # when they entered the segment (the event's time)
    decided_at_ms: int
    seq: int  # the log position of the event that made them enter
    decision: PlacementDecision
    html: str  # the placement's template filled with the decision ("" if nothing)


def load_triggers(
    path: Path | None, segments: SegmentRegistry, placements: PlacementRegistry
) -> list[Trigger]:
    """The triggers of the file; raises `ConfigError` naming the problem, including a
    segment or placement that is not defined (a typo must not wait for a customer)."""
    if path is None:
        return []
    found = []
    for name, value in read_mapping(path, "triggers", "triggers").items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{path}: trigger name {name!r} must match {_NAME.pattern}")
        try:
            spec = msgspec.convert(value, TriggerSpec)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: trigger {name!r}: {exc}") from None
        if segments.get(spec.segment) is None:
            raise ConfigError(f"{path}: trigger {name!r}: no segment {spec.segment!r}")
        if placements.get(spec.placement) is None:
            raise ConfigError(f"{path}: trigger {name!r}: no placement {spec.placement!r}")
        found.append(Trigger(name, spec))
    return found


def decision_html(template: Template, decision: dict[str, Any]) -> str:
    """The decision through its placement's template; nothing when nothing was decided
    (an empty banner with no address is worse than no banner)."""
    if not decision.get("items"):
        return ""
    return template.render(decision)


class Triggers:
    """The membership listener that fires triggers (attached while the app serves)."""

    def __init__(
        self,
        triggers: Iterable[Trigger],
        *,
        decider: Decider,
        context: ContextStage,
        placements: PlacementRegistry,
        webhooks: WebhookDispatcher,
        metrics: Metrics,
        now_ms: Callable[[], int],
    ) -> None:
        self.triggers = list(triggers)
        self._by_segment: dict[str, list[Trigger]] = {}
        for trigger in self.triggers:
            self._by_segment.setdefault(trigger.spec.segment, []).append(trigger)
        self.decider = decider
        self.context = context
        self.placements = placements
        self.webhooks = webhooks
        self.metrics = metrics
        self.now_ms = now_ms
        self.fired = 0
        self.skipped_consent = 0
        self.skipped_gone = 0  # erased (or merged away) before the decision
        self.failed = 0

    def entered(self, segment: Segment, transition: Transition) -> None:
        """The listener: called during ingestion, so it only schedules the work."""
        if not transition.entered or transition.seq == 0:
            return
        triggers = self._by_segment.get(segment.name)
        if not triggers:
            return
        for trigger in triggers:
            try:
                asyncio.get_running_loop().call_soon(self.fire, trigger, transition)
            except RuntimeError:  # no loop (a script): at once
                self.fire(trigger, transition)

    def fire(self, trigger: Trigger, transition: Transition) -> None:
        """Decide the trigger's placement for the person and hand the delivery over."""
        try:
            self._fire(trigger, transition)
        except Exception:  # a bug must not escape into the event loop's callbacks
            self.failed += 1
            log.exception("trigger %s failed for %s", trigger.name, transition.profile_id)

    def _fire(self, trigger: Trigger, transition: Transition) -> None:
        spec = trigger.spec
        profile = self.context.lookup(transition.profile_id)
        if profile is None:
            self.skipped_gone += 1
            return
        if not self.context.rules.consents(profile, spec.purpose):
            self.skipped_consent += 1
            return
        user_id = profile.user_ids[-1] if profile.user_ids else None
        anonymous_id = profile.anonymous_ids[-1] if profile.anonymous_ids else None
        if user_id is None and anonymous_id is None:
            anonymous_id = profile.id
        body = DecideBody(
            [PlacementAsk(spec.placement)], anonymous_id=anonymous_id, user_id=user_id
        )
        placement = self.placements.get(spec.placement)
        try:
            if placement is None:
                raise UnknownPlacements([(0, spec.placement)])
            answer = self.decider.decide(body)
        except UnknownPlacements:  # deleted through the API since start-up
            self.failed += 1
            log.warning("trigger %s: placement %r is not defined", trigger.name, spec.placement)
            return
        self.metrics.count_decisions(answer.decisions)
        decision = answer.decisions[0]
        delivery_id = f"{profile.id}:{trigger.name}:{transition.seq}"
        payload = TriggerPayload(
            id=delivery_id,
            type="placement.triggered",
            trigger=trigger.name,
            segment=spec.segment,
            placement=spec.placement,
            profile_id=profile.id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            entered_at_ms=transition.at_ms,
            decided_at_ms=self.now_ms(),
            seq=transition.seq,
            decision=decision,
            html=decision_html(placement.template, msgspec.to_builtins(decision)),
        )
        self.webhooks.send(Delivery(delivery_id, spec.url, msgspec.json.encode(payload)))
        self.fired += 1
