"""Long answers a process streams at once (backups), each holding what it will send (a backup's
plan: about 1 KB an image) for as long as its client reads.

At most ``size`` at once; past that a newcomer ends the slowest stream read slower than
``KEPT_RATE`` (after its first seconds), as a body slower than that gives up its room
(``shared.web.limits``), or gets 503 ``busy`` when none is. Four clients reading backups at 20 KiB/s,
fast enough for the send deadline, had refused every other backup for as long as theirs lasted.
An ended stream is cut off (its connection closes without the answer's end), so its client sees a
failed download, never a short one taken for whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

from shared.web.limits import KEPT_GRACE_S, KEPT_RATE
from shared.web.responses import StreamCut

log = logging.getLogger("tagsmith")


class StreamSlot:
    def __init__(self, now: float) -> None:
        self.started, self.sent = now, 0
        self.ended = threading.Event()

    def rate(self, now: float) -> float:
        return self.sent / max(now - self.started, 1e-3)

    def send(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks``, counted, until the slot is ended (``StreamCut``)."""
        for chunk in chunks:
            if self.ended.is_set():
                raise StreamCut
            self.sent += len(chunk)
            yield chunk


class StreamSlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self._active: set[StreamSlot] = set()
        self._lock = threading.Lock()

    def take(self, now: float) -> StreamSlot | None:
        """A slot for a new stream, ending the slowest one to make room; None if none is slow."""
        with self._lock:
            if len(self._active) >= self.size:
                slow = [s for s in self._active if now - s.started > KEPT_GRACE_S and s.rate(now) < KEPT_RATE]
                if not slow:
                    return None
                slowest = min(slow, key=lambda s: s.rate(now))
                log.warning("ending a stream read at %.0f KiB/s to make room for another", slowest.rate(now) / 1024)
                slowest.ended.set()
                self._active.discard(slowest)
            slot = StreamSlot(now)
            self._active.add(slot)
            return slot

    def give_back(self, slot: StreamSlot) -> None:
        with self._lock:
            self._active.discard(slot)
