"""``tagsmith worker``: an RQ worker that runs jobs in its own process, so the backbone loads once.

rq's ``SimpleWorker`` registers a started job for its whole timeout plus a minute, so a
worker killed with SIGKILL would leave its task "started" for an hour. ``TrainingWorker``
instead holds a short lease on each job (``heartbeat_ttl_s``) that a thread renews while the
job runs; idle workers, and busy ones from that thread, look for expired leases every
``maintenance_interval_s`` and queue the abandoned job again or fail it (see shared/data/jobs.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from shared.core.blas import expected, kernels
from shared.core.settings import Settings
from shared.data.jobs import adopt
from shared.domain.services import Services, build_services
from shared.domain.training import TrainingError
from shared.models.backbone import INPUT_SIZE
from worker.tasks import TrainingJob, tidy

log = logging.getLogger("tagsmith")


class TrainingWorker(SimpleWorker):
    """A no-fork RQ worker whose started jobs hold a short, renewed lease."""

    def __init__(self, services: Services, name: str | None = None) -> None:
        settings = services.settings
        # worker_ttl - 15 is how long an idle worker blocks on the queue between maintenance checks.
        super().__init__(
            services.queue.queues,
            connection=services.redis,
            name=name,
            maintenance_interval=settings.maintenance_interval_s,
            worker_ttl=settings.maintenance_interval_s + 15,
            serializer=JSONSerializer,
            job_class=TrainingJob,
        )
        self.services = services
        self.heartbeat_ttl = settings.heartbeat_ttl_s

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Counted before the job shows as started, so a kill at any moment after counts the attempt.
        job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
        adopt(job, self.services.queue.stats_key)
        job.save_meta()
        if isinstance(job, TrainingJob):
            job.services = self.services
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="heartbeat", daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        """Renew the job's lease; run maintenance when due, since this worker's loop is busy."""
        while not stop.wait(max(1.0, self.heartbeat_ttl / 3)):
            try:
                self.maintain_heartbeats(job, execution)
                if self.should_run_maintenance_tasks:
                    self.clean_registries()
            except Exception as exc:  # Redis hiccup: the next beat tries again
                log.warning("heartbeat of job %s failed: %s", job.id, exc)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """A training that cannot go on for a reason its task reports (too few examples, its tag
        deleted meanwhile) is the user's to act on, not an error of the service: one WARNING line,
        no traceback. Anything else RQ logs at ERROR with its traceback."""
        error = exc_info[1] if len(exc_info) > 1 else None
        if not isinstance(error, TrainingError):
            super().handle_exception(job, *exc_info)
            return
        log.warning("training job %s failed: %s", job.id, error)
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        if execution is not None:
            # The job raised: running it again would fail the same way. Only abandoned jobs retry.
            job.retries_left = 0
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)


class _QuietMaintenance(logging.Filter):
    """RQ logs every maintenance pass at INFO; every few seconds, that would drown the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "cleaning" not in str(record.msg)


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> None:
    """Build this worker's services, load the backbone, then take trainings until stopped."""
    started = time.monotonic()
    services = build_services(settings)
    backbone = services.backbone  # load the weights before the first job, not during it
    # One forward pass now: CUDA loads its kernels (and a CPU runtime sets up its buffers) on the
    # first run, which would otherwise be part of the first training's time.
    backbone.embed_pixels(np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32))
    services.store.ping()
    if removed := tidy(services):  # what a crash left: an add, delete, training or load that never finished
        log.info("removed what %d unfinished image adds, deletes and model versions left", removed)
    worker = TrainingWorker(services, name)
    logging.getLogger("rq.worker").addFilter(_QuietMaintenance())
    blas, wanted = kernels(), expected()
    if wanted and blas.lower() != wanted.lower():
        log.warning("BLAS kernels %s, not %s: heads trained here can differ from other machines' in their "
                    "last bits (numpy loaded before tagsmith pinned them, or OpenBLAS does not offer them)", blas, wanted)
    log.info(
        "worker %s ready on queue %s in %.1f s (%s, %s, BLAS %s)",
        worker.name, settings.queue_name, time.monotonic() - started, backbone.runtime, backbone.precision, blas,
    )
    worker.work(burst=burst, logging_level="INFO")
