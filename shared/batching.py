"""Dynamic micro-batching: concurrent requests share one forward pass of the backbone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from shared.models.backbone import Backbone, Features


@dataclass
class _Pending:
    pixels: np.ndarray  # (3, 224, 224), from ``shared.models.backbone.preprocess``
    future: asyncio.Future[Features] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class MicroBatcher:
    """Collects preprocessed images from concurrent callers and embeds up to ``max_batch`` at once.

    A lone request runs at once (no added latency); while a batch runs, new requests queue up
    and go together in the next one.
    """

    def __init__(self, backbone: Backbone, max_batch: int = 16) -> None:
        self.backbone = backbone
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def embed(self, pixels: np.ndarray) -> Features:
        """The features of one preprocessed image, computed in whichever batch it joins."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._run())
        pending = _Pending(pixels)
        assert self._queue is not None
        await self._queue.put(pending)
        return await pending.future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                features = await run_in_threadpool(self.backbone.embed_pixels, np.stack([p.pixels for p in batch]))
            except Exception as exc:  # every waiter gets the failure, the loop goes on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for i, p in enumerate(batch):
                if not p.future.done():
                    p.future.set_result(_row(features, i))


def _row(features: Features, i: int) -> Features:
    return Features(
        embeddings=features.embeddings[i : i + 1],
        styles=features.styles[i : i + 1],
        logits=features.logits[i : i + 1],
    )


__all__ = ["MicroBatcher"]
