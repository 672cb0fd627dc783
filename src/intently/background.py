"""Background threads that must not compete with request handling for a CPU.

Snapshots of state and checkpoints of the event log are catch-up work: nothing waits for
them. On a machine with few cores they still take a core for tens of milliseconds at a
time, and the event loop thread, descheduled meanwhile, answers late. They run at a lower
scheduling priority (a higher nice value), so the kernel gives the core to the event loop
and the log writer first whenever they contend.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

# Nice value for background threads (0 is normal, 19 the lowest priority).
BACKGROUND_NICE = 10


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux schedules threads on their
    own; elsewhere this changes nothing)."""
    setpriority = getattr(os, "setpriority", None)
    native_id = threading.get_native_id()
    if setpriority is None or not os.path.exists(f"/proc/self/task/{native_id}"):
        return
    try:
        setpriority(os.PRIO_PROCESS, native_id, BACKGROUND_NICE)
    except OSError as error:  # not permitted in some sandboxes: run at normal priority
        log.debug("could not lower a background thread's priority: %s", error)
