"""Decides that arrive together run back to back; then each request builds its answer.

Under load, uvloop reads many requests in one pass of its loop and starts a task for
each. Run task after task, each request's decide (hundreds of microseconds over the
catalog, the sessions and the models) and the HTTP stack's work around it evict each
other from the CPU's caches, and both run slower than they do alone. So a request hands
its decide to a `Batcher`, which runs every decide waiting, in the order they were
handed in, in one later pass of the loop; each request then answers. On bench/decide.py's
shop the same server answers about a quarter more decides a second this way
(docs/benchmarks.md, "Decides back to back").

What a decide sees does not change: decides run in the order their requests reached
`Batcher.run`, and an event is applied before its acknowledgement is sent, so a decide
asked after an acknowledgement still sees that event. At low load a batch holds one
decide and costs one more pass of the loop. A batch holds at most `max_batch` decides:
the loop serves I/O between the batches of a long queue.

A `Batcher` serves one event loop at a time (an app has one). Handed a call from another
loop while a batch waits on its loop, it runs the call at once, unbatched; if that loop
is closed, the calls stranded on it are dropped (their futures died with it) and the
batcher moves to the new loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Runs the calls handed to `run` back to back, in the loop's next pass."""

    def __init__(self, max_batch: int = 32, on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one call")
        self.max_batch = max_batch
        self.on_batch = on_batch  # told the size of each batch run (a metric)
        self._waiting: deque[tuple[Callable[[], T], asyncio.Future[T]]] = deque()
        # The loop a batch is scheduled on; None when none is.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    async def run(self, call: Callable[[], T]) -> T:
        """The result of `call()` (or its exception), run with the others waiting."""
        loop = asyncio.get_running_loop()
        if self._scheduled_on is None:
            self._scheduled_on = loop
            loop.call_soon(self._run_batch)
        elif self._scheduled_on is not loop:
            if not self._scheduled_on.is_closed():
                # One app served from two live loops at once (tests can do this): no
                # batching, but never a call left waiting.
                return call()
            # The loop closed with a batch scheduled: nobody awaits what it stranded.
            self._waiting.clear()
            self._scheduled_on = loop
            loop.call_soon(self._run_batch)
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append((call, future))
        return await future

    def _run_batch(self) -> None:
        waiting = self._waiting
        batch = [waiting.popleft() for _ in range(min(self.max_batch, len(waiting)))]
        ran = 0  # (a batch of cancelled calls only records 0)
        try:
            for call, future in batch:
                if future.cancelled():  # the request is gone (its client disconnected)
                    continue
                try:
                    result = call()
                except StopIteration as error:  # a future refuses StopIteration itself
                    future.set_exception(RuntimeError(f"the call raised {error!r}"))
                except Exception as error:  # it belongs to that request alone
                    future.set_exception(error)
                else:
                    future.set_result(result)
                ran += 1
        finally:
            # Something no request owns escaped (KeyboardInterrupt, SystemExit): it goes
            # on up, but no request of this batch is left awaiting forever.
            for _, future in batch:
                if not future.done():
                    future.cancel()
            # Scheduled after the batch's requests were woken: they answer before the
            # next batch runs.
            if waiting:
                assert self._scheduled_on is not None
                self._scheduled_on.call_soon(self._run_batch)
            else:
                self._scheduled_on = None
        if self.on_batch is not None:
            self.on_batch(ran)
