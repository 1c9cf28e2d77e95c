"""The decoding pixel budget: requests await their pixels on the event loop, never in a thread of the
shared pool. (A review: 60 clients looping a 160 KB PNG of 7000 x 7000 pixels had left every one of
the pool's 40 threads waiting for pixels; `GET /custom/tags` took 5 s instead of 4 ms, `/ready` 15-18 s.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from shared.core.errors import Unavailable
from shared.domain.services import Services
from shared.models import decoding
from shared.models.decoding import PixelBudget, Reservation, decode_cost, decode_image
from tests.support.api import add, teach_cat
from tests.support.badinput import animated_webp_canvas
from tests.support.photos import CAT, crops, encode, photo

LIMIT = 50_000_000


@contextmanager
def taken_by_a_thread(budget: PixelBudget, pixels: int) -> Iterator[None]:
    """``pixels`` held by another thread (an image decoding there) until the block ends."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with budget.hold(pixels):
            taken.set()
            done.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        done.set()
        thread.join(10)


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.01)


def test_a_request_awaits_its_pixels_on_the_event_loop() -> None:
    budget = PixelBudget(100)

    async def scenario() -> None:
        with taken_by_a_thread(budget, 100):
            reserving = asyncio.create_task(enter(budget.reserve(60)))
            ticks = 0
            for _ in range(5):  # the loop goes on while the request waits
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 5 and not reserving.done() and budget.in_use == 100
        await until(reserving.done)
        assert budget.in_use == 60
        await reserving.result().__aexit__(None, None, None)
        assert budget.in_use == 0

    asyncio.run(scenario())


async def enter(manager: Any) -> Any:
    """An async context manager, entered: its ``__aexit__`` is the caller's to call."""
    await manager.__aenter__()
    return manager


def test_a_reservation_decodes_without_waiting_and_gives_its_pixels_back() -> None:
    png = encode(photo(CAT).resize((400, 300)), "PNG")
    budget = PixelBudget(400 * 300)
    assert decode_cost(png, LIMIT) == 400 * 300

    async def scenario() -> None:
        async with budget.reserve(decode_cost(png, LIMIT)) as reserved:
            assert budget.in_use == budget.capacity  # the budget is full: only the reservation decodes now
            decoded = await asyncio.wait_for(asyncio.to_thread(decode_image, png, LIMIT, budget=reserved), 30)
            assert decoded.width == 400 and budget.in_use == budget.capacity
            with reserved.hold(400 * 300):  # released while a decode holds it: back once that decode ends
                reserved.release()
                assert budget.in_use == budget.capacity
            assert budget.in_use == 0
        assert budget.in_use == 0

    asyncio.run(scenario())


def test_a_wait_past_its_bound_is_refused_busy() -> None:
    budget = PixelBudget(100)

    async def scenario() -> None:
        with pytest.raises(Unavailable) as refused:
            async with budget.reserve(50, wait_s=0.2):
                pass
        assert refused.value.code == "busy"

    with taken_by_a_thread(budget, 100):
        asyncio.run(scenario())
        assert budget.in_use == 100
    assert budget.in_use == 0
    with budget.hold(100):  # nothing was left waiting to take pixels later
        assert budget.in_use == 100


def test_a_request_that_goes_away_keeps_no_pixels() -> None:
    budget = PixelBudget(100)

    async def scenario() -> None:
        with taken_by_a_thread(budget, 100):  # cancelled while waiting
            waiting = asyncio.create_task(enter(budget.reserve(70)))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert budget.in_use == 0
        with budget.hold(100):  # cancelled just as its pixels were granted
            granted = asyncio.create_task(enter(budget.reserve(70)))
            await asyncio.sleep(0.05)
        granted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await granted
        await until(lambda: budget.in_use == 0)

    asyncio.run(scenario())


def test_threads_and_requests_share_one_count() -> None:
    budget, peak, lock = PixelBudget(100), [0], threading.Lock()

    def note() -> None:
        with lock:
            peak[0] = max(peak[0], budget.in_use)

    def thread_decode() -> None:
        with budget.hold(60):
            note()
            time.sleep(0.01)

    async def request_decode() -> None:
        async with budget.reserve(60):
            note()
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        await asyncio.gather(*(request_decode() for _ in range(10)),
                             *(asyncio.to_thread(thread_decode) for _ in range(10)))

    asyncio.run(scenario())
    assert peak[0] == 60 and budget.in_use == 0  # one at a time: two never fit


def test_a_decode_larger_than_its_reservation_gives_it_back_before_it_waits() -> None:
    """An animated WebP holds four canvases, more than its size reserved: holding the reservation
    while it waited for the whole budget, its thread and pixels had waited for good (a review: its
    first thumbnail never answered, and the budget stayed at 49 of 100 MP)."""
    budget = PixelBudget(100)

    async def scenario() -> None:
        async with budget.reserve(30) as reserved:
            def decode() -> int:
                with reserved.hold(400):  # all of the budget, as 4 x 7000 x 7000 of 100 MP
                    return budget.in_use
            assert await asyncio.wait_for(asyncio.to_thread(decode), 10) == 100
        assert budget.in_use == 0

    asyncio.run(scenario())


def test_a_decode_waiting_beyond_its_reservation_cannot_hold_up_others_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests for the first thumbnail of one animated WebP stored before its decoding cost was
    kept: each reserved its size, a quarter of what it holds. The first took the image's lock and
    waited for the rest, behind the second's reservation; the second waited for the lock: for good,
    and every later request behind them was refused busy. The wait beyond a reservation is bounded."""
    monkeypatch.setattr(decoding, "BUDGET_WAIT_S", 0.5)
    budget, image_lock, results = PixelBudget(100), threading.Lock(), []

    async def request(first: bool) -> None:
        async with budget.reserve(25) as reserved:
            def thumbnail() -> str:
                with image_lock, reserved.hold(100):  # the thumbnail's lock: one decode of the image at a time
                    time.sleep(0.2 if first else 0)
                    return "made"
            try:
                results.append(await asyncio.to_thread(thumbnail))
            except Unavailable as refused:
                results.append(refused.code)

    async def scenario() -> None:
        first = asyncio.create_task(request(True))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(first, request(False)), 10)

    asyncio.run(scenario())
    assert sorted(results) in (["busy", "made"], ["made", "made"]) and budget.in_use == 0
    with budget.hold(0):  # nothing is left queued
        async def no_pixels() -> None:
            async with budget.reserve(0):
                pass
        asyncio.run(no_pixels())


def test_a_request_that_needs_no_pixels_never_waits_for_them() -> None:
    """A prediction for a cached image needs none, but queued behind a large image it waited 60 s."""
    budget = PixelBudget(100)

    async def scenario() -> None:
        with taken_by_a_thread(budget, 60):
            large = asyncio.create_task(enter(budget.reserve(100)))
            await asyncio.sleep(0.05)
            async with budget.reserve(0, wait_s=0.5):  # not behind the large one
                pass
            with budget.hold(0, wait_s=0.5):
                pass
            assert not large.done()
        await until(large.done)
        await large.result().__aexit__(None, None, None)

    asyncio.run(scenario())
    assert budget.in_use == 0


def test_decodes_sharing_a_reservation_stay_within_it() -> None:
    """A suggestion decodes its images on several threads: each decode was let in on the one
    reservation, eight of 60 pixels at once against a budget of 100."""
    budget, inside, peak, lock = PixelBudget(100), [0], [0], threading.Lock()

    def decode(reserved: Reservation) -> None:
        with reserved.hold(40):
            with lock:
                inside[0] += 40
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= 40

    async def scenario() -> None:
        async with budget.reserve(90) as reserved:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(decode, [reserved] * 16))
            assert budget.in_use == 90

    asyncio.run(scenario())
    assert peak[0] == 80 and budget.in_use == 0  # two at a time fit in the 90 reserved


def test_a_large_image_is_not_starved_by_a_stream_of_small_ones() -> None:
    """Pixels went to any waiter that fitted: six requests looping over small images kept a large one
    waiting until it was refused busy. Waiters now take their turn in order of arrival."""
    budget, stop = PixelBudget(100), asyncio.Event()

    async def small() -> None:
        while not stop.is_set():
            async with budget.reserve(30):
                await asyncio.sleep(0.01)

    async def scenario() -> None:
        loops = [asyncio.create_task(small()) for _ in range(6)]
        await asyncio.sleep(0.05)
        async with budget.reserve(100, wait_s=2):
            assert budget.in_use == 100
        stop.set()
        await asyncio.gather(*loops)

    asyncio.run(scenario())
    assert budget.in_use == 0


def test_the_cost_read_ahead_is_what_the_decode_holds() -> None:
    seen: list[int] = []

    class Seen(PixelBudget):
        @contextmanager
        def hold(self, pixels: int) -> Iterator[None]:
            seen.append(pixels)
            yield

    for data in (crops(CAT, 1, seed=3)[0], encode(photo(CAT), "PNG")):
        decode_image(data, LIMIT, budget=Seen(10**9))
        assert seen[-1] == decode_cost(data, LIMIT)
    canvas = animated_webp_canvas()
    assert decode_cost(canvas, LIMIT) == 4 * 7000 * 7000  # its decoder's canvases (test_abuse decodes it)
    assert decode_cost(canvas, 1_000_000) == 0  # refused before decoding: it waits for nothing
    assert decode_cost(b"not an image", LIMIT) == 0


class Arrivals(PixelBudget):
    """The services' budget, counting the decodes that come to it: a thread about to hold pixels,
    or a request about to reserve them."""

    def __init__(self, pixels: int) -> None:
        super().__init__(pixels)
        self.arrived = 0
        self._count = threading.Lock()

    def _arrive(self) -> None:
        with self._count:
            self.arrived += 1

    def hold(self, pixels: int) -> Any:
        self._arrive()
        return super().hold(pixels)

    def reserve(self, pixels: int, *args: Any) -> Any:
        self._arrive()
        return super().reserve(pixels, *args)


# Uploads of each kind (48 in all), and three times as many first thumbnails (48), predictions
# for stored images not embedded yet (48) and suggestions ranking them (48): each more than the
# 40 threads of the shared pool.
HEAVY = 16


def slow_png() -> bytes:
    """A PNG of 4.2 megapixels (a few KB): over ``predictions.SLOW_PIXELS_OTHERS``, so a prediction
    decodes it in a thread of the shared pool, not on a lane, as the review's huge PNGs."""
    return encode(photo(CAT).resize((30, 20)).resize((2100, 2000), Image.Resampling.NEAREST), "PNG", optimize=True)


def test_requests_waiting_for_pixels_leave_the_thread_pool_to_other_routes(client: TestClient, services: Services) -> None:
    teach_cat(client, services)  # a model, for predictions and suggestions
    photos = crops(CAT, 2 * HEAVY + 1, seed=11)
    add(client, photos[-1], "shown")  # a stored image whose first thumbnail is asked for, many times at once
    stored = [add(client, data) for data in crops("coffee", HEAVY, seed=12)]  # none embedded yet
    budget = services.decode_budget = Arrivals(services.decode_budget.capacity)
    uploads = [("/predict/custom", slow_png())] * HEAVY + [("/custom/add", data) for data in photos[:HEAVY]] + \
              [("/custom/add_many", data) for data in photos[HEAVY : 2 * HEAVY]] + \
              [("/custom/images/shown/thumbnail", b"")] * 3 * HEAVY + \
              [(f"/custom/predict/{image_id}", b"") for image_id in stored] + \
              [(f"/custom/predict/cat/{image_id}", b"") for image_id in stored] + \
              [("/custom/suggest/cat", b"")] * 3 * HEAVY

    def post(path: str, data: bytes) -> Any:
        return client.post(path, files={"data": ("photo.jpg", data)}) if data else client.get(path)

    with ThreadPoolExecutor(len(uploads) + 2) as pool:
        # The whole budget is taken, as by a huge image decoding for as long as the test needs.
        with taken_by_a_thread(budget, budget.capacity):
            answers = [pool.submit(post, path, data) for path, data in uploads]
            deadline = time.monotonic() + 20
            while budget.arrived < 1 + len(uploads) and time.monotonic() < deadline:  # every upload waits
                time.sleep(0.05)
            started = time.monotonic()
            tags, ready = pool.submit(client.get, "/custom/tags"), pool.submit(client.get, "/ready")
            try:  # before, they waited for a thread of the pool for as long as the uploads waited for pixels
                assert tags.result(timeout=15).status_code == 200
                assert ready.result(timeout=15).status_code == 200
            except TimeoutError:
                pytest.fail("a route without images waited behind uploads waiting for pixels")
            took = time.monotonic() - started
            assert budget.arrived == 1 + len(uploads) and not any(answer.done() for answer in answers)
        statuses = [answer.result(timeout=120).status_code for answer in answers]
    assert statuses == [200] * HEAVY + [201] * HEAVY + [200] * HEAVY + [200] * 8 * HEAVY
    assert budget.in_use == 0
    print(f"\n/custom/tags and /ready while {len(uploads)} requests waited for pixels: {1000 * took:.0f} ms")


def test_an_animated_webp_stored_gets_its_thumbnail_and_prediction(client: TestClient, services: Services) -> None:
    """Its first thumbnail reserved the canvas's size, then waited for its four canvases holding
    that: it never answered, and the pixels it held were never given back."""
    image_id = add(client, animated_webp_canvas())
    with ThreadPoolExecutor(4) as pool:  # two of each: one waits for the image's lock meanwhile
        answers = [pool.submit(client.get, path) for path in [f"/custom/images/{image_id}/thumbnail",
                                                               f"/custom/predict/{image_id}"] * 2]
        assert [answer.result(timeout=120).status_code for answer in answers] == [200] * 4
    assert services.decode_budget.in_use == 0
    assert "decode_pixels" not in client.get(f"/custom/images/{image_id}").json()  # kept, not shown
