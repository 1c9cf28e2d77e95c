"""Slots for long streamed answers (``shared.web.streams``), without a server: at most so many at
once, and a newcomer ends the slowest one read slower than ``KEPT_RATE``, which is cut off."""

from __future__ import annotations

import pytest

from shared.web.limits import KEPT_GRACE_S, KEPT_RATE
from shared.web.responses import StreamCut
from shared.web.streams import StreamSlots


def test_a_newcomer_ends_the_slowest_stream_read_too_slowly() -> None:
    """Four clients reading backups at 20 KiB/s had refused every other backup while theirs lasted."""
    slots = StreamSlots(2)
    slow, slower = slots.take(now=0.0), slots.take(now=0.0)
    assert slow is not None and slower is not None
    sent_slow, sent_slower = slow.send([b"x" * 100_000] * 3), slower.send([b"x" * 10_000] * 3)
    next(sent_slow), next(sent_slower)
    assert slots.take(now=1.0) is None  # in their first seconds, nobody is slow yet: busy
    newcomer = slots.take(now=KEPT_GRACE_S + 1)
    assert newcomer is not None and slower.ended.is_set() and not slow.ended.is_set()
    with pytest.raises(StreamCut):  # its client sees a failed download, not a short one
        next(sent_slower)
    assert next(sent_slow)


def test_streams_read_fast_keep_their_slots() -> None:
    slots = StreamSlots(1)
    fast = slots.take(now=0.0)
    assert fast is not None
    sending = fast.send([b"x" * (4 * KEPT_RATE)] * 2)
    next(sending)
    assert slots.take(now=KEPT_GRACE_S + 1) is None  # read at more than KEPT_RATE: kept
    slots.give_back(fast)
    assert slots.take(now=KEPT_GRACE_S + 1) is not None
