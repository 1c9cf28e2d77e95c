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
    assert budget.take(first, 60, 0.6) and not budget.take(first, 50, 0.6)  # past its length, beyond the room left
    budget.release(first)
    assert budget.in_use == 0


def test_slow_bodies_give_up_their_unsent_room_the_slowest_first() -> None:
    budget = BodyBudget(10 * KEPT_RATE)
    slowest, slow = budget.hold(4 * KEPT_RATE, now=0.0), budget.hold(6 * KEPT_RATE, now=0.0)
    assert slowest is not None and slow is not None
    assert budget.take(slowest, 1000, 0.1) and budget.take(slow, KEPT_RATE, 0.1)  # slow has more room unsent, but is faster
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
    assert fast is not None and budget.take(fast, 5 * KEPT_RATE, 3.0)
    assert budget.hold(4 * KEPT_RATE, now=4.0) is None  # 5 MiB in 4 s: not late


def test_a_declaration_that_sends_nothing_keeps_little_even_at_first() -> None:
    """Declarations of 256 MiB sending nothing, a new one every 0.1 s, had each kept all of it for
    its first seconds: every upload and prediction was refused. At first a body keeps what it has
    sent and ``KEPT_GRACE_S`` more at ``KEPT_RATE``; the rest goes to a body that needs it."""
    budget = BodyBudget(10 * KEPT_RATE)
    idle = budget.hold(10 * KEPT_RATE, now=0.0)
    honest = budget.hold(5 * KEPT_RATE, now=0.1)
    assert idle is not None and honest is not None
    assert idle.reserved == int(KEPT_RATE * KEPT_GRACE_S)


def test_a_body_that_lost_room_and_a_chunked_one_take_it_back_from_idle_ones() -> None:
    """Only newcomers took room from late bodies: a body that had lost its room, and any chunked
    body, were refused halfway while idle declarations held it."""
    budget = BodyBudget(10 * KEPT_RATE)
    honest = budget.hold(8 * KEPT_RATE, now=0.0)
    assert honest is not None and budget.take(honest, KEPT_RATE // 2, now=3.0)  # late: under KEPT_RATE
    idle = budget.hold(8 * KEPT_RATE, now=3.0)  # takes the honest body's unsent room
    assert idle is not None and honest.reserved == KEPT_RATE // 2
    assert budget.take(honest, 3 * KEPT_RATE, now=6.0)  # the idle one is the slowest now: its room goes
    chunked = budget.hold(0, now=6.0)
    assert chunked is not None and budget.take(chunked, 2 * KEPT_RATE, now=6.1)
    assert budget.in_use <= budget.capacity
