"""The training queue: RQ jobs whose id is the task id and whose meta holds progress.

Jobs are serialised as JSON, never pickled, and their results are kept until the tag's
task is looked up, across restarts. A job whose worker stops beating (killed, out of
memory, cut off) is queued again up to ``abandoned_retries`` times, then failed with a
clear error; a job that raises is never retried, since it would fail the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Callback, Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from shared.core.errors import NotFound
from shared.core.settings import Settings

TRAIN_FUNCTION = "worker.tasks.train_tag"
EMBED_FUNCTION = "worker.tasks.embed_library"
RESCORE_FUNCTION = "worker.tasks.rescore_library"
LIBRARY_TIMEOUT_S = 3600  # embedding a batch or rescoring 100,000 images takes seconds to minutes
LIBRARY_TASKS_SHOWN = 100  # library jobs /custom/library lists
# How long a finished library job is kept for /status: one is queued per add that finds none
# waiting, and each kept job holds about 7 KB of Redis (its hash and its result stream), so a
# client adding and deleting images had piled up 1.2 GB an hour kept for TASK_TTL_S (a week).
# Polling clients need minutes; failed ones are kept for TASK_TTL_S, as trainings.
LIBRARY_RESULT_TTL_S = 600
# Run in the worker when a training ends: they count trainings and durations for /metrics.
ON_SUCCESS = Callback("shared.data.jobs.on_training_success")
ON_FAILURE = Callback("shared.data.jobs.on_training_failure")
# Where jobs queued by earlier versions of tagsmith name their callbacks (RQ stores the names).
RENAMED_CALLBACKS = {
    "shared.metrics.on_training_success": ON_SUCCESS.name,
    "shared.metrics.on_training_failure": ON_FAILURE.name,
}
TRAINING_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "started",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "failed",
    JobStatus.CANCELED: "failed",
}


class TrainingQueue:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.prefix = settings.key_prefix
        self.timeout = settings.training_timeout_s
        self.retries = settings.abandoned_retries
        self.task_ttl = settings.task_ttl_s
        self.queue = Queue(settings.queue_name, connection=client, serializer=JSONSerializer)
        # Library jobs (embedding new images, rescoring for new versions) wait behind trainings.
        self.library = Queue(f"{settings.queue_name}-library", connection=client, serializer=JSONSerializer)

    @property
    def queues(self) -> list[Queue]:
        """The queues a worker takes jobs from, in priority order."""
        return [self.queue, self.library]

    @property
    def stats_key(self) -> str:
        """The hash of training counts and durations, kept by the workers' job callbacks."""
        return f"{self.prefix}:metrics:training"

    def training_stats(self) -> dict[str, Any]:
        """Queue depth, and trainings finished and failed with their durations (for /metrics)."""
        with self.redis.pipeline() as pipe:
            pipe.llen(self.queue.key)
            pipe.hgetall(self.stats_key)
            depth, raw = pipe.execute()
        stats = {k.decode(): float(v) for k, v in raw.items()}
        cumulative, buckets = 0.0, []
        for bound in (*TRAINING_BUCKETS, math.inf):
            name = "+Inf" if bound == math.inf else str(bound)
            cumulative += stats.get(f"le:{name}", 0.0)
            buckets.append((name, cumulative))
        return {"depth": int(depth), "finished": stats.get("finished", 0.0), "failed": stats.get("failed", 0.0),
                "seconds": stats.get("seconds", 0.0), "buckets": buckets}

    def _queued_key(self, tag: str) -> str:
        return f"{self.prefix}:tag:{tag}:queued"

    def _fetch(self, task_id: str) -> Job | None:
        try:
            return Job.fetch(task_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def submit(self, tag: str, epoch: int) -> tuple[str, bool]:
        """Queue a training of the tag; returns (task id, whether it was already queued).

        Race-free: the check of the tag's waiting task and the enqueue are one transaction
        (WATCH on the tag's queued key), so concurrent requests get one task between them. A
        waiting task of an earlier epoch (queued before the tag was deleted) is not reused:
        it is discarded when it runs (its epoch moved), and a training of the tag made anew
        needs its own.
        """
        def make() -> Job:
            return self.queue.create_job(
                TRAIN_FUNCTION,
                args=(tag, epoch),
                timeout=self.timeout,
                result_ttl=self.task_ttl,
                failure_ttl=self.task_ttl,
                meta={"tag": tag, "progress": 0.0, "stage": "queued", "attempts": 0, "stats_key": self.stats_key},
                description=f"train {tag}",
                retry=Retry(max=self.retries) if self.retries else None,
                on_success=ON_SUCCESS,
                on_failure=ON_FAILURE,
            )

        return self._submit_once(self.queue, self._queued_key(tag), make, lambda job: _epoch(job) == epoch)

    def trainings_waiting(self) -> bool:
        """Whether a training job is queued (not yet taken by a worker)."""
        return bool(self.queue.count)

    def submit_embedding(self) -> str:
        """Queue a job that embeds the images waiting for it into the library, unless one is
        waiting already; returns its task id. Called on every add: the common case (a job is
        waiting) costs two round trips."""
        key = self._queued_key_of("embedding")
        waiting = self.redis.get(key)
        if waiting:
            task_id = waiting.decode() if isinstance(waiting, bytes) else str(waiting)
            if self.redis.hget(Job.key_for(task_id), "status") == JobStatus.QUEUED.value.encode():
                return task_id

        def make() -> Job:
            return self._library_job(EMBED_FUNCTION, (), "embed new images into the library")

        return self._submit_once(self.library, key, make)[0]

    def submit_rescore(self, tags: list[str]) -> str:
        """Queue a job that scores the whole library with the tags' current versions, unless one for
        the same tags is waiting (it reads the versions when it runs: a burst of publishes, say
        rollbacks, needs one); returns its task id."""
        tags = sorted(set(tags))
        name = "rescore:" + hashlib.sha256("\0".join(tags).encode()).hexdigest()[:32]

        def make() -> Job:
            return self._library_job(RESCORE_FUNCTION, (tags,), f"rescore the library for {len(tags)} tags")

        return self._submit_once(self.library, self._queued_key_of(name), make, ttl=self.task_ttl)[0]

    def library_tasks(self) -> list[dict[str, str]]:
        """The library jobs running, then those queued, at most ``LIBRARY_TASKS_SHOWN``: task id,
        what it does, status."""
        started = StartedJobRegistry(queue=self.library).get_job_ids(0, LIBRARY_TASKS_SHOWN - 1)
        queued = self.library.get_job_ids(0, LIBRARY_TASKS_SHOWN)
        found = [(job_id, "started") for job_id in started] + [(job_id, "queued") for job_id in queued]
        found = found[:LIBRARY_TASKS_SHOWN]
        jobs = Job.fetch_many([job_id for job_id, _ in found], connection=self.redis, serializer=JSONSerializer)
        return [{"task_id": job_id, "description": job.description or "", "status": status}
                for (job_id, status), job in zip(found, jobs, strict=True) if job is not None]

    def _library_job(self, function: str, args: tuple[Any, ...], description: str) -> Job:
        return self.library.create_job(
            function, args=args, timeout=LIBRARY_TIMEOUT_S, result_ttl=min(LIBRARY_RESULT_TTL_S, self.task_ttl),
            failure_ttl=self.task_ttl,
            meta={"tag": None, "progress": 0.0, "stage": "queued", "attempts": 0},
            description=description, retry=Retry(max=self.retries) if self.retries else None,
        )

    def _queued_key_of(self, name: str) -> str:
        return f"{self.prefix}:library:{name}:queued"

    def _submit_once(
        self, queue: Queue, key: str, make: Callable[[], Job], reusable: Callable[[Job], bool] = lambda job: True,
        ttl: int | None = None,
    ) -> tuple[str, bool]:
        """Enqueue ``make()`` unless the job named by ``key`` is still waiting (and ``reusable``);
        returns (task id, whether it was waiting already). The check and the enqueue are one
        transaction (WATCH on ``key``); ``ttl``: seconds ``key`` is kept (default: for good)."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    waiting = pipe.get(key)
                    if waiting:
                        job = self._fetch(waiting.decode() if isinstance(waiting, bytes) else str(waiting))
                        if job is not None and job.get_status() == JobStatus.QUEUED and reusable(job):
                            return job.id, True
                    job = make()
                    pipe.multi()
                    queue.enqueue_job(job, pipeline=pipe)
                    pipe.set(key, job.id, ex=ttl)
                    pipe.execute()
                    return job.id, False
                except redis.WatchError:
                    continue

    def mark_started(self, tag: str, task_id: str) -> None:
        """Called by the worker: later requests for the tag queue a new training."""
        self._release(self._queued_key(tag), task_id)

    def mark_embedding_started(self, task_id: str) -> None:
        """Called by the worker: images added from now on queue a new embedding job."""
        self._release(self._queued_key_of("embedding"), task_id)

    def _release(self, key: str, task_id: str) -> None:
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) == task_id.encode():
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except redis.WatchError:
                pass  # a new task was queued meanwhile: the key is no longer ours

    def recover_abandoned(self, every_started: bool = False) -> list[str]:
        """Retry or fail jobs whose worker stopped beating; returns the ids it handled.

        Workers do the same in their maintenance (RQ's registry cleanup). ``every_started`` treats
        every started training as abandoned, leases or not: for ``tagsmith serve`` starting on its
        own Redis, whose workers all died with the previous run; those are queued again even
        when their retries are spent, since no fault of theirs stopped them. Takes RQ's
        maintenance lock, so no two processes handle one abandoned job twice (``every_started``
        goes on without it: a lock left by a killed process of the previous run would hold it).
        """
        locked = self.queue.acquire_maintenance_lock()
        if not locked and not every_started:
            return []
        try:
            handled: list[str] = []
            for queue in self.queues:
                started = StartedJobRegistry(queue=queue)
                if not every_started:
                    handled += [str(job_id) for job_id in started.get_expired_job_ids()]
                    started.cleanup()
                    continue
                abandoned = started.get_job_ids()
                started.cleanup(timestamp=(datetime.now(UTC) + timedelta(days=3650)).timestamp())
                failed = FailedJobRegistry(queue=queue)
                for job_id in abandoned:
                    with contextlib.suppress(Exception):  # retried already: it is queued, not failed
                        failed.requeue(job_id)
                handled += abandoned
            return handled
        finally:
            if locked:
                self.queue.release_maintenance_lock()

    def _is_abandoned(self, task_id: str) -> bool:
        return any(task_id in StartedJobRegistry(queue=q).get_expired_job_ids() for q in self.queues)

    def status(self, task_id: str) -> dict[str, Any]:
        """The task's state for clients; NotFound if no such task exists (or it has expired).

        Looking at a started task whose worker has stopped beating recovers it right away,
        so clients polling a task see it end even when no worker is left to notice.
        """
        job = self._fetch(task_id)
        if job is None:
            raise NotFound("unknown_task", f"No task with id '{task_id}'.")
        if job.get_status() == JobStatus.STARTED and self._is_abandoned(task_id):
            self.recover_abandoned()
        status = _STATUS.get(job.get_status(refresh=True), "queued")
        meta = job.get_meta()
        attempts = int(meta.get("attempts", 0))
        body: dict[str, Any] = {
            "task_id": job.id,
            "tag": meta.get("tag"),
            "status": status,
            "progress": {"finished": 1.0, "queued": 0.0}.get(status, float(meta.get("progress", 0.0))),
            "stage": {"finished": "done", "queued": "queued", "failed": "failed"}.get(status)
            or meta.get("stage", status),
            "attempts": attempts,
            "enqueued_at": _iso(job.enqueued_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
        }
        if status == "finished":
            body["result"] = job.return_value()
        if status == "failed":
            body["error"] = meta.get("error") or abandoned_message(attempts)
        return body


def adopt(job: Job, stats_key: str) -> None:
    """Bring a job queued by an earlier version of tagsmith up to date before it runs: its
    callbacks' new names, and where its outcome is counted."""
    for name in ("_success_callback_name", "_failure_callback_name"):
        current = getattr(job, name)
        setattr(job, name, RENAMED_CALLBACKS.get(current, current) if current else current)
    job.meta.setdefault("stats_key", stats_key)


def _stats_key(job: Job) -> str:
    return str(job.meta["stats_key"])


def on_training_success(job: Job, connection: redis.Redis, result: Any, *args: Any, **kwargs: Any) -> None:
    """RQ success callback (runs in the worker): count the training and its duration."""
    started = job.started_at
    seconds = 0.0
    if started is not None:
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        seconds = max(0.0, (datetime.now(UTC) - started).total_seconds())
    bucket = next((str(b) for b in TRAINING_BUCKETS if seconds <= b), "+Inf")
    with connection.pipeline() as pipe:
        pipe.hincrby(_stats_key(job), "finished", 1)
        pipe.hincrbyfloat(_stats_key(job), "seconds", seconds)
        pipe.hincrby(_stats_key(job), f"le:{bucket}", 1)
        pipe.execute()


def on_training_failure(job: Job, connection: redis.Redis, *exc_info: Any, **kwargs: Any) -> None:
    """RQ failure callback (runs in the worker): count the failed training."""
    connection.hincrby(_stats_key(job), "failed", 1)


def _epoch(job: Job) -> int | None:
    """The tag epoch a training job was queued under (its second argument)."""
    try:
        return int(job.args[1])
    except (IndexError, TypeError, ValueError):
        return None


def abandoned_message(attempts: int) -> str:
    tries = f" on each of its {attempts} attempts" if attempts > 1 else ""
    return (
        f"The worker running this task stopped before it finished{tries} (killed, out of memory "
        "or cut off from Redis), so the task was given up. Train the tag again to retry."
    )


def _iso(moment: Any) -> str | None:
    """ISO 8601 UTC to the millisecond."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z" if moment else None
