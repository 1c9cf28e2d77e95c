"""The body budget's bookkeeping (``shared.web.limits.BodyBudget``), without a server: a declared
length takes its room whole; a body slower than ``KEPT_RATE`` gives up the room its unsent bytes
took to a newcomer that needs it, the slowest first; the total stays what the holds hold."""

from __future__ import annotations

from shared.web.limits import KEPT_GRACE_S, KEPT_RATE, BodyBudget


def test_a_declared_body_takes_its_room_whole_and_gives_it_back() -> None:
    budget = BodyBudget(100)
    first = budget.hold(60, now=0.0)
    assert first is not None and budget.in_use == 60
    assert budget.hold(50, now=0.5) is None  # no room, and the first is not late: refused at once
    assert budget.take(first, 60) and not budget.take(first, 50)  # past its length, beyond the room left
    budget.release(first)
    assert budget.in_use == 0


def test_slow_bodies_give_up_their_unsent_room_the_slowest_first() -> None:
    budget = BodyBudget(10 * KEPT_RATE)
    slowest, slow = budget.hold(4 * KEPT_RATE, now=0.0), budget.hold(6 * KEPT_RATE, now=0.0)
    assert slowest is not None and slow is not None
    assert budget.take(slowest, 1000) and budget.take(slow, KEPT_RATE)  # slow has more room unsent, but is faster
    later = KEPT_GRACE_S + 3  # both late by now: under KEPT_RATE since their first seconds
    newcomer = budget.hold(3 * KEPT_RATE, now=later)
    assert newcomer is not None
    assert (slowest.reserved, slow.reserved) == (1000, 6 * KEPT_RATE)  # only the slowest gave its room
    assert budget.in_use == 1000 + 6 * KEPT_RATE + 3 * KEPT_RATE
    assert budget.hold(4 * KEPT_RATE, now=later) is not None  # then the next slowest
    assert slow.reserved == KEPT_RATE
    for hold in (slowest, slow, newcomer):
        budget.release(hold)
    assert budget.in_use == 4 * KEPT_RATE  # the last newcomer's


def test_a_body_keeping_up_keeps_its_room() -> None:
    budget = BodyBudget(10 * KEPT_RATE)
    fast = budget.hold(8 * KEPT_RATE, now=0.0)
    assert fast is not None and budget.take(fast, 5 * KEPT_RATE)
    assert budget.hold(4 * KEPT_RATE, now=4.0) is None  # 5 MiB in 4 s: not late
