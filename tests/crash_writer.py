"""Child process for the torn-write tests: appends groups to an event log, reports each
acknowledged group on stdout, then waits to be killed (kill -9)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from intently.log.eventlog import EventLog, LogRow

path, groups, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# No checkpoints: every frame stays in the WAL, in commit order, so the parent knows that
# the WAL's last frames belong to the last group.
log = EventLog.open(path, checkpoint_seconds=0)
for group in range(groups):
    body = b'{"group":%d}' % group + b" " * 300
    first = log.append_sync(
        [LogRow(f"g{group}-{i}", group, group, "track", "a", None, body) for i in range(size)]
    )
    print(f"{group} {first} {size}", flush=True)
print("done", flush=True)
time.sleep(600)
