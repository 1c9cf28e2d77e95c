"""Small files that decode to huge images, many at once, on a real ``tagsmith serve``: memory stays
within the decoding budget whatever the concurrency and is given back afterwards, thumbnails are
made once, and such an image holds back no other prediction. (An outside review: a 208 KB PNG of
7000 x 7000 pixels cost 0.9 GB a request, 8 at once +4.4 GB, and the server kept 5.5 GB after.)"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from tests.support.photos import CAT, crops
from tests.support.servers import TagsmithServer, serving

pytestmark = pytest.mark.integration  # starts a tagsmith serve

MB = 2**20


def huge_png() -> bytes:
    """A 7000 x 7000 RGBA PNG of a few hundred KB (49 megapixels, 196 MB decoded)."""
    gradient = np.linspace(0, 255, 7000, dtype=np.uint8)
    rgba = np.dstack([np.tile(gradient, (7000, 1)), np.tile(gradient[:, None], (1, 7000)),
                      np.full((7000, 7000), 90, np.uint8), np.full((7000, 7000), 200, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TagsmithServer]:
    with serving(tmp_path_factory.mktemp("memory") / "data") as instance:
        instance.wait_for_worker()
        yield instance


@pytest.fixture(scope="module")
def png() -> bytes:
    return huge_png()


class Peak:
    """The server's resident memory, sampled while a ``with`` block runs."""

    def __init__(self, server: TagsmithServer) -> None:
        assert server.process is not None
        self.process = psutil.Process(server.process.pid)
        self.before = self.peak = self.rss()
        self._stop = threading.Event()

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def __enter__(self) -> Peak:
        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, self.rss())

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()

    def settled(self, seconds: float = 3.0) -> int:
        """Resident memory once idle for a while, above where it started."""
        time.sleep(seconds)
        return self.rss() - self.before


def test_many_huge_images_at_once_stay_within_the_budget_and_memory_comes_back(server: TagsmithServer, png: bytes) -> None:
    assert len(png) < 1_000_000
    requests.post(f"{server.base}/predict", files={"data": ("w.jpg", crops(CAT, 1, seed=1)[0])}, timeout=60)  # warm
    with Peak(server) as memory, ThreadPoolExecutor(8) as pool:
        adds = list(pool.map(lambda i: requests.post(f"{server.base}/custom/add?image_id=huge-{i}",
                                                     files={"data": ("h.png", png)}, timeout=300), range(8)))
    assert [a.status_code for a in adds] == [201] * 8
    grew, kept = (memory.peak - memory.before) / MB, memory.settled() / MB
    print(f"\n8 adds of a 49 MP PNG at once: +{grew:.0f} MB at the peak, +{kept:.0f} MB after")
    assert grew < 1100 and kept < 250


def test_thumbnails_of_a_huge_image_are_made_once(server: TagsmithServer, png: bytes) -> None:
    assert requests.post(f"{server.base}/custom/add?image_id=huge-thumb", files={"data": ("h.png", png)},
                         timeout=120).status_code == 201
    url = f"{server.base}/custom/images/huge-thumb/thumbnail?size=300"
    with Peak(server) as memory, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: requests.get(url, timeout=300), range(16)))
    assert all(a.status_code == 200 and a.headers["content-type"] == "image/jpeg" for a in answers)
    assert len({a.content for a in answers}) == 1 and max(Image.open(io.BytesIO(answers[0].content)).size) == 300
    grew, kept = (memory.peak - memory.before) / MB, memory.settled() / MB
    print(f"\n16 thumbnails of a 49 MP PNG at once: +{grew:.0f} MB at the peak, +{kept:.0f} MB after")
    assert grew < 700 and kept < 250
    stored = server.data_dir / "objects" / "thumbnails" / "huge-thumb"
    assert [p.name for p in stored.iterdir()] == ["512.jpg"]  # made once, from which each size is cut
    assert requests.delete(f"{server.base}/custom/images/huge-thumb", timeout=30).status_code == 200
    assert not stored.exists()  # the deleted image's thumbnail folder goes with its files


def test_a_huge_image_holds_back_no_other_prediction(server: TagsmithServer, png: bytes) -> None:
    finished: dict[str, float] = {}

    def predict(name: str, data: bytes) -> None:
        response = requests.post(f"{server.base}/predict", files={"data": (name, data)}, timeout=300)
        assert response.status_code == 200, response.text
        finished[name] = time.monotonic()

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(predict, "huge.png", png)
        time.sleep(0.1)  # the huge one is decoding
        quick = pool.submit(predict, "cat.jpg", crops(CAT, 1, seed=2)[0])
        slow.result(), quick.result()
    assert finished["cat.jpg"] < finished["huge.png"]
