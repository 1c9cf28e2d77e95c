"""Sharing the backbone among concurrent predict requests.

Each request hands over how to prepare its image rather than the prepared pixels: ``prepare``
decodes and crops, and returns the pixels and ``later``, the rest of its work on the image (base
style scores, say). An image then goes one of three ways:

- **Alone** (no other request in flight): prepared in a thread, its forward pass on the backbone
  with every thread, its ``later`` work beside the forward pass: the shortest wait for one image.
- **On a lane**, under load, where the runtime has lanes (``Backbone.lane``: the CPU runtimes).
  One thread per core, each with its own single-threaded copy of the backbone, takes the next
  waiting images (up to ``LANE_BATCH``, leaving some for the other lanes), prepares them, runs
  their forward pass, their ``later`` work, and answers them. Lanes never wait for one another:
  the threads of one all-threads forward pass meet at every layer, so image work beside it stalled
  it, and batches had to alternate between image work and forward pass on every core, leaving
  cores idle at each turn. A single-threaded pass also costs less CPU per image (``bench.versus``
  measures both).
- **In a shared batch** otherwise (torch, where the device spreads one pass itself): concurrent
  requests share batches of up to ``max_batch``, all their image work first on every core, then
  one forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from shared.core.process import cpu_pool, usable_cores
from shared.models.backbone import Backbone, Features

T = TypeVar("T")
# What ``prepare`` returns: the (3, 224, 224) pixels from ``shared.models.backbone.preprocess``
# and ``later``, whose result the caller gets back with the features.
Prepare = Callable[[], tuple[np.ndarray, Callable[[], T]]]
Result = tuple[Features, Any] | BaseException  # per request: its features and extras, or its error

# Most images a lane takes at once: single-threaded OpenVINO spends about 5% less CPU per image at
# batch 2-4 than at 1, but each image of a lane's largest pass keeps its activations (two lanes
# added 103 MB to the process at batch 1, 148 MB at 2, 238 MB at 4), and a lane's images wait
# for each other's preparation.
LANE_BATCH = 2
log = logging.getLogger("tagsmith")


@dataclass
class _Pending(Generic[T]):
    prepare: Prepare[T]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    future: asyncio.Future[tuple[Features, T]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MicroBatcher:
    """Shares ``backbone`` among concurrent requests: alone, on ``lanes`` lanes (default: one per
    usable core), or in shared batches of up to ``max_batch`` (see the module's docstring)."""

    def __init__(self, backbone: Backbone, max_batch: int = 16, lanes: int = 0) -> None:
        self.backbone = backbone
        self.max_batch = max_batch
        self.lane_count = lanes or usable_cores()
        self._in_flight = 0
        self._count_lock = threading.Lock()
        # Lanes start on the first request that finds another in flight; [] where there are none.
        self._lanes: list[threading.Thread] | None = None
        self._lock = threading.Lock()  # guards the lanes' start and the batch tasks
        self._lane_queue: queue.SimpleQueue[_Pending[Any] | None] = queue.SimpleQueue()
        # Shared batches, per event loop (one in a server; tests start several): its queue and the
        # task serving it, kept until that loop is closed so that no caller's request is left behind.
        self._batches: dict[asyncio.AbstractEventLoop, tuple[asyncio.Queue[_Pending[Any]], asyncio.Task[None]]] = {}

    async def embed(self, prepare: Prepare[T]) -> tuple[Features, T]:
        """Run ``prepare``, its ``later`` and the forward pass of its pixels; the features and what
        ``later`` returned. An error in either reaches this caller only.

        Both run on a lane or on ``cpu_pool()`` beside other image work, so they must not
        themselves wait on that pool; a slow one (a huge image) delays its lane or batch.
        """
        with self._count_lock:
            self._in_flight += 1
            alone = self._in_flight == 1
        try:
            if alone:
                result = (await run_in_threadpool(_embed, self.backbone, [prepare], cpu_pool()))[0]
                if isinstance(result, BaseException):
                    raise result
                return result
            pending: _Pending[T] = _Pending(prepare)
            if self._lanes is None:
                await run_in_threadpool(self._start_lanes)
            if self._lanes:
                self._lane_queue.put(pending)
            else:
                await self._batch_queue().put(pending)
            return await pending.future
        finally:
            with self._count_lock:
                self._in_flight -= 1

    async def close(self) -> None:
        """Stop the lanes and this event loop's batch task (an app's lifespan ends with it)."""
        with self._lock:
            for _ in self._lanes or ():
                self._lane_queue.put(None)  # after whatever is waiting
            self._lanes = None
            _, task = self._batches.pop(asyncio.get_running_loop(), (None, None))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start_lanes(self) -> None:
        """Open the backbone's lanes and start a thread for each (none where it has none)."""
        with self._lock:
            if self._lanes is not None:
                return
            copies: list[Backbone] = []
            try:
                for _ in range(self.lane_count if self.lane_count > 1 else 0):
                    copy = self.backbone.lane()
                    if copy is None:
                        break
                    copies.append(copy)
            except Exception:
                log.warning("no lanes: shared batches instead", exc_info=True)
                copies = []
            self._lanes = [threading.Thread(target=self._serve_lane, args=(copy,), name=f"lane-{i}", daemon=True)
                           for i, copy in enumerate(copies)]
            for thread in self._lanes:
                thread.start()

    def _serve_lane(self, backbone: Backbone) -> None:
        """One lane: take the next waiting images, embed them on ``backbone``, answer; until told
        to stop (``None``)."""
        lanes = max(len(self._lanes or ()), 1)
        while (first := self._lane_queue.get()) is not None:
            batch = [first]
            while len(batch) < LANE_BATCH and self._lane_queue.qsize() >= lanes:  # leave the others some
                try:
                    extra = self._lane_queue.get_nowait()
                except queue.Empty:
                    break
                if extra is None:
                    self._lane_queue.put(None)  # it stops the next lane to find it: this one, soon
                    break
                batch.append(extra)
            batch = [p for p in batch if not p.future.done()]  # callers that went away cost nothing
            try:
                results: list[Result] = _embed(backbone, [p.prepare for p in batch], None) if batch else []
            except BaseException as exc:  # its callers get the error; the lane goes on
                failure = exc if isinstance(exc, Exception) else RuntimeError("the batch was interrupted")
                results = [failure] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting
                    pending.loop.call_soon_threadsafe(_settle, pending.future, result)
            del batch, results  # no uploads kept alive while idle

    def _batch_queue(self) -> asyncio.Queue[_Pending[Any]]:
        """This event loop's queue of shared batches, its task started if needed."""
        loop = asyncio.get_running_loop()
        with self._lock:
            batches, task = self._batches.get(loop) or (asyncio.Queue(), None)
            if task is None or task.done():  # first use on this loop, or its task ended: queued callers wait on
                self._batches = {other: entry for other, entry in self._batches.items() if not other.is_closed()}
                self._batches[loop] = (batches, loop.create_task(self._run_batches(batches)))
        return batches

    async def _run_batches(self, batches: asyncio.Queue[_Pending[Any]]) -> None:
        while True:
            batch = [await batches.get()]
            while len(batch) < self.max_batch and not batches.empty():
                batch.append(batches.get_nowait())
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            try:
                results = await run_in_threadpool(_embed, self.backbone, [p.prepare for p in batch], cpu_pool())
            except BaseException as exc:  # nobody is left waiting; only cancellation ends the loop
                failure = exc if isinstance(exc, Exception) else RuntimeError("the batch was interrupted")
                for pending in batch:
                    _settle(pending.future, failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for pending, result in zip(batch, results, strict=True):
                _settle(pending.future, result)
            del batch, results


def _embed(backbone: Backbone, prepares: list[Prepare[Any]], pool: ThreadPoolExecutor | None) -> list[Result]:
    """Prepare every image, then one forward pass over those that succeeded; with ``pool``, the
    image work runs on its threads (a lone image's ``later`` beside its forward pass), else in
    this thread."""
    def each(works: list[Callable[[], Any]]) -> list[Any]:
        if pool is None or len(works) == 1:
            return [_attempt(work) for work in works]
        return list(pool.map(_attempt, works))

    prepared = each([partial(_unpacked, prepare) for prepare in prepares])
    results: list[Result] = [p if isinstance(p, BaseException) else _NOT_RUN for p in prepared]
    ready = {i: p for i, p in enumerate(prepared) if not isinstance(p, BaseException)}
    if not ready:
        return results
    pixels = np.stack([pixels for pixels, _ in ready.values()])
    laters = [later for _, later in ready.values()]
    if len(laters) == 1 and pool is not None:  # a lone image: its later work runs beside the forward pass
        lone = pool.submit(_attempt, laters[0])
        features = _attempt(partial(backbone.embed_pixels, pixels))
        extras = [lone.result()]
    else:
        extras = each(laters)
        features = _attempt(partial(backbone.embed_pixels, pixels))
    for row, (i, extra) in enumerate(zip(ready, extras, strict=True)):
        if isinstance(features, BaseException) or isinstance(extra, BaseException):
            results[i] = features if isinstance(features, BaseException) else extra
        else:
            results[i] = (_row(features, row), extra)
    return results


def _unpacked(prepare: Prepare[T]) -> tuple[np.ndarray, Callable[[], T]]:
    """What ``prepare`` returns, checked to be (pixels, later): anything else fails its own request."""
    pixels, later = prepare()
    return pixels, later


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
