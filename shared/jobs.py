"""The training queue: RQ jobs whose id is the task id and whose meta holds progress.

Jobs are serialised as JSON, never pickled, and their results are kept until the tag's
task is looked up, across restarts.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Callback, Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
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
        self.queue = Queue(settings.queue_name, connection=client, serializer=JSONSerializer)

    def _queued_key(self, tag: str) -> str:
        return f"{self.prefix}:tag:{tag}:queued"

    def submit(self, tag: str, epoch: int) -> tuple[str, bool]:
        """Queue a training of the tag; returns (task id, whether it was already queued)."""
        waiting = self.redis.get(self._queued_key(tag))
        if waiting:
            try:
                job = Job.fetch(waiting.decode(), connection=self.redis, serializer=JSONSerializer)
                if job.get_status() == JobStatus.QUEUED:
                    return job.id, True
            except NoSuchJobError:
                pass
        job = self.queue.enqueue_call(
            TRAIN_FUNCTION,
            args=(tag, epoch),
            timeout=self.timeout,
            result_ttl=-1,
            failure_ttl=365 * 24 * 3600,
            meta={"tag": tag, "progress": 0.0, "stage": "queued"},
            description=f"train {tag}",
            on_success=ON_SUCCESS,
            on_failure=ON_FAILURE,
        )
        self.redis.set(self._queued_key(tag), job.id)
        return job.id, False

    def mark_started(self, tag: str, task_id: str) -> None:
        """Called by the worker: later requests for the tag queue a new training."""
        key = self._queued_key(tag)
        with self.redis.pipeline() as pipe:
            pipe.watch(key)
            if pipe.get(key) == task_id.encode():
                pipe.multi()
                pipe.delete(key)
                pipe.execute()

    def status(self, task_id: str) -> dict[str, Any]:
        """The task's state for clients; 404 if no such task exists."""
        try:
            job = Job.fetch(task_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            raise not_found("unknown_task", f"No task with id '{task_id}'.") from None
        status = _STATUS.get(job.get_status(), "queued")
        meta = job.get_meta()
        body: dict[str, Any] = {
            "task_id": job.id,
            "tag": meta.get("tag"),
            "status": status,
            "progress": 1.0 if status == "finished" else float(meta.get("progress", 0.0)),
            "stage": "done" if status == "finished" else meta.get("stage", status),
            "enqueued_at": _iso(job.enqueued_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
        }
        if status == "finished":
            body["result"] = job.return_value()
        if status == "failed":
            body["error"] = meta.get("error") or "The worker running this task stopped before it finished."
        return body


def _iso(moment: Any) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None
