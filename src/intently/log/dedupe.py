"""The messageIds seen within a window, so a retried event is acknowledged but applied once.

Clients retry: a browser resends a batch whose response it never got, a server SDK retries
on a timeout. Segment's answer is to drop a messageId seen again within 24 hours; so is
this one. The window is held in memory (about 120 bytes per id) and rebuilt from the event
log at start, so a restart does not forget it. Time is the events' receive time, which also
makes replays of history deduplicate like live traffic did.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class MessageIdWindow:
    """Remembers ids for `window_ms` of receive time, at most `max_entries` of them.

    >>> seen = MessageIdWindow(window_ms=1000, max_entries=10)
    >>> seen.add("m1", 0), seen.add("m1", 500), seen.add("m1", 1600)
    (True, False, True)
    """

    def __init__(self, window_ms: int, max_entries: int) -> None:
        if window_ms <= 0:
            raise ValueError("window_ms must be positive")
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.window_ms = window_ms
        self.max_entries = max_entries
        # Insertion order is receive order for live traffic, so the oldest is first.
        # OrderedDict, not dict: removing from the front of a plain dict leaves holes that
        # make every later `next(iter(...))` scan them.
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._watermark = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._seen

    def add(self, message_id: str, received_ms: int, *, expire: bool = True) -> bool:
        """Record `message_id`; False if it was already seen within the window.

        Live traffic arrives in receive order, so each add moves a watermark and ids older
        than the window behind it are dropped. History (a replay, or ids read back from the
        log) need not be in order: it adds with `expire=False`, which neither moves the
        watermark nor drops anything; only `max_entries` bounds memory then.
        """
        if expire and received_ms > self._watermark:
            self._watermark = received_ms
            self._expire()
        seen = self._seen
        previous = seen.get(message_id)
        if previous is not None:
            if abs(received_ms - previous) < self.window_ms:
                return False
            del seen[message_id]  # seen again after the window: it moves to the end
        seen[message_id] = received_ms
        if len(seen) > self.max_entries:
            seen.popitem(last=False)
        return True

    def discard(self, message_id: str) -> None:
        """Forget an id whose event was not made durable after all."""
        self._seen.pop(message_id, None)

    def load(self, entries: Iterable[tuple[str, int]]) -> int:
        """Add ids read back from the log; returns how many were added."""
        count = 0
        for message_id, received_ms in entries:
            count += self.add(message_id, received_ms, expire=False)
        return count

    def _expire(self) -> None:
        horizon = self._watermark - self.window_ms
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > horizon:
                return
            seen.popitem(last=False)
