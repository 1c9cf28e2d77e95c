"""The training queue: RQ jobs whose id is the task id and whose meta holds progress.

Jobs are serialised as JSON, never pickled, and their results are kept until the tag's
task is looked up, across restarts. A job whose worker stops beating (killed, out of
memory, cut off) is queued again up to ``abandoned_retries`` times, then failed with a
clear error; a job that raises is never retried, since it would fail the same way.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Callback, Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from shared.errors import not_found
from shared.settings import Settings

TRAIN_FUNCTION = "worker.tasks.train_tag"
# Run in the worker when a training ends: they count trainings and durations for /metrics.
ON_SUCCESS = Callback("shared.metrics.on_training_success")
ON_FAILURE = Callback("shared.metrics.on_training_failure")
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
        self.queue = Queue(settings.queue_name, connection=client, serializer=JSONSerializer)

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
        waiting task of an earlier epoch (queued before the tag was deleted) is not reused.
        """
        key = self._queued_key(tag)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    waiting = pipe.get(key)
                    if waiting:
                        job = self._fetch(waiting.decode() if isinstance(waiting, bytes) else str(waiting))
                        # A task queued before the tag was deleted is discarded when it runs
                        # (its epoch moved): a training of the tag made anew needs its own.
                        if job is not None and job.get_status() == JobStatus.QUEUED and _epoch(job) == epoch:
                            return job.id, True
                    job = self.queue.create_job(
                        TRAIN_FUNCTION,
                        args=(tag, epoch),
                        timeout=self.timeout,
                        result_ttl=-1,
                        failure_ttl=365 * 24 * 3600,
                        meta={"tag": tag, "progress": 0.0, "stage": "queued", "attempts": 0},
                        description=f"train {tag}",
                        retry=Retry(max=self.retries) if self.retries else None,
                        on_success=ON_SUCCESS,
                        on_failure=ON_FAILURE,
                    )
                    pipe.multi()
                    self.queue.enqueue_job(job, pipeline=pipe)
                    pipe.set(key, job.id)
                    pipe.execute()
                    return job.id, False
                except redis.WatchError:
                    continue

    def mark_started(self, tag: str, task_id: str) -> None:
        """Called by the worker: later requests for the tag queue a new training."""
        key = self._queued_key(tag)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) == task_id.encode():
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except redis.WatchError:
                pass  # a new task was queued meanwhile: the key is no longer ours

    def recover_abandoned(self) -> None:
        """Retry or fail trainings whose worker stopped beating, as the workers' maintenance does.

        Takes RQ's maintenance lock, so no two processes handle one abandoned job twice.
        """
        if not self.queue.acquire_maintenance_lock():
            return
        try:
            StartedJobRegistry(queue=self.queue).cleanup()
        finally:
            self.queue.release_maintenance_lock()

    def _is_abandoned(self, task_id: str) -> bool:
        return task_id in StartedJobRegistry(queue=self.queue).get_expired_job_ids()

    def status(self, task_id: str) -> dict[str, Any]:
        """The task's state for clients; 404 if no such task exists.

        Looking at a started task whose worker has stopped beating recovers it right away,
        so clients polling a task see it end even when no worker is left to notice.
        """
        job = self._fetch(task_id)
        if job is None:
            raise not_found("unknown_task", f"No task with id '{task_id}'.")
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
