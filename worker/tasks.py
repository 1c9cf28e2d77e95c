"""The training job as RQ runs it: ``train_tag`` (the name queued jobs carry) runs
``shared.domain.training.run_training`` with its worker's services, and keeps the job's progress
and any error in the job's meta for ``/status``."""

from __future__ import annotations

from typing import Any

from rq import get_current_job
from rq.job import Job

from shared.domain.services import Services
from shared.domain.training import TrainingError, run_training


class TrainingJob(Job):
    """A job whose function gets the services of the worker running it as its first argument."""

    services: Services | None = None  # set by the worker before it performs the job

    def _execute(self) -> Any:
        if self.services is None:
            raise RuntimeError("a TrainingJob runs only in a TrainingWorker, which gives it its services")
        return self.func(self.services, *self.args, **self.kwargs)


def _report(stage: str, progress: float, error: str | None = None) -> None:
    job = get_current_job()
    if job is None:
        return
    job.meta.update(stage=stage, progress=round(progress, 3))
    if error:
        job.meta["error"] = error
    job.save_meta()


def train_tag(services: Services, tag: str, epoch: int) -> dict[str, Any]:
    """RQ entry point; the job's result is the new version's summary."""
    job = get_current_job()
    if job is not None:
        services.queue.mark_started(tag, job.id)
    try:
        return run_training(services, tag, epoch, _report)
    except Exception as exc:
        _report("failed", 0.0, str(exc) if isinstance(exc, TrainingError) else f"Training failed: {exc!r}")
        raise
