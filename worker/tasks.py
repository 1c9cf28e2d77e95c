"""The jobs as RQ runs them (the names queued jobs carry): ``train_tag`` runs
``shared.domain.training.run_training``; ``embed_library`` and ``rescore_library`` keep the library
embedded and scored (``shared.domain.library``), then ``tidy`` the store.
Each gets its worker's services and keeps its progress and any error in the job's meta for ``/status``."""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job
from rq.job import Job

from shared.core.errors import DomainError
from shared.domain import catalog, images, library
from shared.domain.services import Services
from shared.domain.training import TrainingError, run_training

log = logging.getLogger("tagsmith")


class TrainingJob(Job):
    """A job whose function gets the services of the worker running it as its first argument."""

    services: Services | None = None  # set by the worker before it performs the job

    def _execute(self) -> Any:
        if self.services is None:
            raise RuntimeError("a TrainingJob runs only in a TrainingWorker, which gives it its services")
        return self.func(self.services, *self.args, **self.kwargs)


def failure_message(exc: Exception) -> str:
    """What ``/status`` says of a training that raised: a training error's own words, a domain
    error's message (not its class and code: ``InvalidInput('...')``), else the exception."""
    if isinstance(exc, TrainingError):
        return str(exc)
    return f"Training failed: {exc.message if isinstance(exc, DomainError) else repr(exc)}"


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
        _report("failed", 0.0, failure_message(exc))
        raise


def embed_library(services: Services) -> dict[str, Any]:
    """RQ entry point: embed and score the images waiting for it; then remove the files of adds and
    deletes that never finished (``images.remove_unlinked_files``)."""
    job = get_current_job()
    if job is not None:
        services.queue.mark_embedding_started(job.id)
    return {**library.embed_waiting(services, _report), "unfinished_removed": tidy(services)}


def tidy(services: Services) -> int:
    """Remove what adds, deletes, trainings and loads that never finished left in the store
    (``images.remove_unlinked_files``, ``catalog.remove_unsettled_versions``); returns how many
    images and versions. Never fails the job that runs it: the next one tries again."""
    try:
        return images.remove_unlinked_files(services) + catalog.remove_unsettled_versions(services)
    except Exception as exc:
        log.warning("removing what unfinished adds, deletes, trainings and loads left failed: %r", exc)
        return 0


def rescore_library(services: Services, tags: list[str]) -> dict[str, Any]:
    """RQ entry point: score the whole library with the tags' current versions (queued after each
    publication); then ``tidy``."""
    return {**library.rescore(services, tags, _report), "unfinished_removed": tidy(services)}
