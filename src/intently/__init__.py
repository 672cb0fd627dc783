"""intently: a self-hosted real-time personalization engine.

The public API is what `__all__` lists; everything else may change between releases.
"""

from intently._version import __version__
from intently.client import AsyncClient, Client, IntentlyError
from intently.clock import Clock, ManualClock, SystemClock
from intently.config import Settings, load_settings
from intently.engine import Engine
from intently.events.schema import (
    AliasEvent,
    Event,
    IdentifyEvent,
    PageEvent,
    ScreenEvent,
    TrackEvent,
)
from intently.pipeline import ClientInfo, EventSink, IngestResult, Pipeline

__all__ = [
    "AliasEvent",
    "AsyncClient",
    "Client",
    "ClientInfo",
    "Clock",
    "Engine",
    "Event",
    "EventSink",
    "IdentifyEvent",
    "IngestResult",
    "IntentlyError",
    "ManualClock",
    "PageEvent",
    "Pipeline",
    "ScreenEvent",
    "Settings",
    "SystemClock",
    "TrackEvent",
    "__version__",
    "load_settings",
]
