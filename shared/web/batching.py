"""Dynamic micro-batching: concurrent requests share one forward pass of the backbone.

Each request hands over how to prepare its image rather than the prepared pixels: ``prepare``
decodes and crops, and returns the pixels and ``later``, the rest of its work on the image (base
style scores, say). A batch first runs all its images' work on every core, then the forward pass
on every core: the two phases take turns instead of competing for the same cores, since image
work beside the forward pass slowed the runtime's threads (they wait on each other at every
layer) and cost more CPU per image than it saved. A lone image is the exception: a forward pass
of one image leaves room, and its ``later`` work runs beside it, which shortens the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from shared.core.process import cpu_pool
from shared.models.backbone import Backbone, Features

T = TypeVar("T")
# What ``prepare`` returns: the (3, 224, 224) pixels from ``shared.models.backbone.preprocess``
# and ``later``, whose result the caller gets back with the features.
Prepare = Callable[[], tuple[np.ndarray, Callable[[], T]]]


@dataclass
class _Pending(Generic[T]):
    prepare: Prepare[T]
    future: asyncio.Future[tuple[Features, T]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


Result = tuple[Features, Any] | BaseException  # per request: its features and extras, or its error


class MicroBatcher:
    """Collects concurrent requests and embeds up to ``max_batch`` images at once.

    A lone request runs at once (no added latency); while a batch runs, new requests queue up
    and go together in the next one.
    """

    def __init__(self, backbone: Backbone, max_batch: int = 16) -> None:
        self.backbone = backbone
        self.max_batch = max_batch
        # Per event loop (one in a server; tests start several): its queue and the task serving it,
        # kept until that loop is closed so that no caller's request is left behind.
        self._lanes: dict[asyncio.AbstractEventLoop, tuple[asyncio.Queue[_Pending[Any]], asyncio.Task[None]]] = {}
        self._lanes_lock = threading.Lock()

    async def embed(self, prepare: Prepare[T]) -> tuple[Features, T]:
        """Run ``prepare``, its ``later`` and the forward pass of its pixels in whichever batch it
        joins; the features and what ``later`` returned. An error in either reaches this caller only.

        Both run on ``cpu_pool()`` beside the batch's other image work, so they must not
        themselves wait on that pool; a slow one (a huge image) delays its whole batch.
        """
        loop = asyncio.get_running_loop()
        with self._lanes_lock:
            queue, task = self._lanes.get(loop) or (asyncio.Queue(), None)
            if task is None or task.done():  # first use on this loop, or its task ended: queued callers wait on
                self._lanes = {other: lane for other, lane in self._lanes.items() if not other.is_closed()}
                self._lanes[loop] = (queue, loop.create_task(self._run(queue)))
        pending: _Pending[T] = _Pending(prepare)
        await queue.put(pending)
        return await pending.future

    async def close(self) -> None:
        """Stop this event loop's batch task (an app's lifespan ends with it)."""
        with self._lanes_lock:
            _, task = self._lanes.pop(asyncio.get_running_loop(), (None, None))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, queue: asyncio.Queue[_Pending[Any]]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # callers that went away cost nothing
            if not batch:
                continue
            try:
                results: list[Result] = await run_in_threadpool(self._process, [p.prepare for p in batch])
            except BaseException as exc:  # nobody is left waiting; only cancellation ends the loop
                failure = exc if isinstance(exc, Exception) else RuntimeError("the batch was interrupted")
                for pending in batch:
                    _settle(pending.future, failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for pending, result in zip(batch, results, strict=True):
                _settle(pending.future, result)
            del batch, results  # no uploads kept alive while idle

    def _process(self, prepares: list[Prepare[Any]]) -> list[Result]:
        """Prepare every image on all cores, then one forward pass over those that succeeded."""
        pool = cpu_pool()
        prepared = list(pool.map(_attempt, prepares)) if len(prepares) > 1 else [_attempt(prepares[0])]
        results: list[Result] = [p if isinstance(p, BaseException) else _NOT_RUN for p in prepared]
        ready = {i: p for i, p in enumerate(prepared) if not isinstance(p, BaseException)}
        if not ready:
            return results
        pixels = np.stack([pixels for pixels, _ in ready.values()])
        laters = [later for _, later in ready.values()]
        if len(laters) == 1:  # a lone image: its later work runs beside the forward pass
            lone = pool.submit(_attempt, laters[0])
            features = _attempt(partial(self.backbone.embed_pixels, pixels))
            extras = [lone.result()]
        else:  # a batch: all the image work first, on all cores, then the forward pass
            extras = list(pool.map(_attempt, laters))
            features = _attempt(partial(self.backbone.embed_pixels, pixels))
        for row, (i, extra) in enumerate(zip(ready, extras, strict=True)):
            if isinstance(features, BaseException) or isinstance(extra, BaseException):
                results[i] = features if isinstance(features, BaseException) else extra
            else:
                results[i] = (_row(features, row), extra)
        return results


_NOT_RUN = RuntimeError("not embedded")  # a placeholder: every entry is set before results are used


def _attempt(work: Callable[[], T]) -> T | BaseException:
    try:
        return work()
    except Exception as exc:
        return exc


def _settle(future: asyncio.Future[Any], result: Result) -> None:
    if future.done():  # the caller went away
        return
    if isinstance(result, StopIteration):  # a future cannot hold one
        future.set_exception(RuntimeError(f"prepare raised StopIteration: {result}"))
    elif isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _row(features: Features, i: int) -> Features:
    return Features(
        embeddings=features.embeddings[i : i + 1],
        styles=features.styles[i : i + 1],
        logits=features.logits[i : i + 1],
    )


__all__ = ["MicroBatcher", "Prepare"]
