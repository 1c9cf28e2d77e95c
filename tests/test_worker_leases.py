"""Training jobs on the real queue and worker class: leases, abandoned jobs, retries, dedup.

Workers killed here run the real ``TrainingWorker`` in a subprocess on a job that only sleeps,
so they start in a second or two; the training itself is covered by test_api and test_distributed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rq import Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from shared.domain.services import Services
from tests.support.api import run_queued_jobs
from tests.support.servers import Process, clean_env

pytestmark = pytest.mark.integration  # starts servers or processes, or loads the backbone


@pytest.fixture
def leased(services: Services) -> Services:
    """The test's services with short leases, as the workers started below get them."""
    services.settings.heartbeat_ttl_s, services.settings.maintenance_interval_s = 2, 1
    return services


@pytest.fixture
def start_worker(leased: Services, tmp_path: Path) -> Iterator[Callable[[str], Process]]:
    """Start the real worker class in a subprocess, without loading the backbone."""
    started: list[Process] = []
    code = ("import sys; from shared.core.settings import Settings; from shared.domain.services import "
            "build_services; from worker.main import TrainingWorker; "
            "TrainingWorker(build_services(Settings()), sys.argv[1]).work()")
    env = clean_env(**leased.settings.as_env())

    def start(name: str) -> Process:
        worker = Process(name, [sys.executable, "-c", code, name], tmp_path / "logs", env)
        started.append(worker)
        until(lambda: bool(leased.redis.exists(f"rq:worker:{name}")), f"worker {name} registered")
        return worker

    yield start
    for worker in started:
        worker.stop()


def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def sleeper(services: Services, seconds: float) -> Job:
    """A job that holds a worker for a while, with the retry budget that trainings get."""
    return services.queue.queue.enqueue_call(
        "tests.support.api.hold_worker", args=(seconds,), timeout=120, meta={"tag": "t"},
        retry=Retry(max=services.settings.abandoned_retries),
    )


def job_state(services: Services, job: Job) -> tuple[JobStatus, str | None]:
    fresh = Job.fetch(job.id, connection=services.redis, serializer=JSONSerializer)
    return fresh.get_status(), fresh.worker_name


def test_a_long_job_keeps_its_lease_while_a_killed_workers_job_is_retried_once_then_failed(
    leased: Services, start_worker: Callable[[str], Process]
) -> None:
    queue = leased.queue
    first = start_worker("lease-a")

    # A job that runs several leases long is not taken for abandoned while its worker lives.
    long_job = sleeper(leased, 5)
    until(lambda: job_state(leased, long_job)[0] == JobStatus.STARTED, "long job started")
    while job_state(leased, long_job)[0] == JobStatus.STARTED:
        queue.recover_abandoned()
        time.sleep(0.2)
    assert queue.status(long_job.id)["status"] == "finished"

    # Killed mid-job: once the lease runs out, the job is queued again and a surviving worker runs it.
    job = sleeper(leased, 60)
    until(lambda: job_state(leased, job) == (JobStatus.STARTED, "lease-a"), "job started on lease-a")
    first.kill()
    second = start_worker("lease-b")
    until(lambda: job_state(leased, job) == (JobStatus.STARTED, "lease-b"), "job retried on lease-b")

    # Killed again and no worker left: looking at the task ends it, failed with a clear error.
    second.kill()
    until(lambda: queue.status(job.id)["status"] == "failed", "task failed")
    status = queue.status(job.id)
    assert "stopped before it finished" in status["error"] and status["stage"] == "failed"
    assert job.id in FailedJobRegistry(queue=queue.queue)
    assert queue.queue.count == 0  # not queued a third time


def test_a_training_that_raises_fails_at_once_and_is_not_retried(client, leased: Services) -> None:  # type: ignore[no-untyped-def]
    queue = leased.queue
    task_id, _ = queue.submit("lonely", 0)  # no examples: the training raises
    assert Job.fetch(task_id, connection=leased.redis, serializer=JSONSerializer).retries_left == 1
    run_queued_jobs(leased)
    status = queue.status(task_id)
    assert status["status"] == "failed" and status["attempts"] == 1
    assert "needs at least one of each" in status["error"]
    assert queue.queue.count == 0


def test_a_failed_training_says_what_went_wrong_in_words() -> None:
    """A damaged current archive had failed a training with "Training failed: InvalidInput('...')"."""
    from shared.core.errors import InvalidInput
    from worker.tasks import failure_message

    damaged = InvalidInput("invalid_archive", "The archive's manifest is not JSON.")
    assert failure_message(damaged) == "Training failed: The archive's manifest is not JSON."
    assert failure_message(OSError(28, "No space left on device")).startswith("Training failed: OSError(28")


def test_concurrent_train_requests_share_one_queued_task(leased: Services) -> None:
    barrier = threading.Barrier(8)
    answers: list[tuple[str, bool]] = []

    def submit() -> None:
        barrier.wait()
        answers.append(leased.queue.submit("cat", 0))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({task_id for task_id, _ in answers}) == 1
    assert sorted(already for _, already in answers) == [False] + [True] * 7
    assert leased.queue.queue.count == 1
    # Once the worker has taken it, a new request queues a new task.
    leased.queue.mark_started("cat", answers[0][0])
    assert leased.queue.submit("cat", 0) == (leased.queue.queue.job_ids[-1], False)


def test_a_training_asked_for_after_the_tag_was_reset_is_not_merged_into_the_doomed_one(
    client, services: Services  # type: ignore[no-untyped-def]
) -> None:
    """A training still waiting when its tag is deleted is discarded when it runs (the tag's epoch
    moved). A training of the tag made anew must not be answered with that doomed task."""
    from tests.support.api import add
    from tests.support.photos import CAT, crops

    for i, data in enumerate(crops(CAT, 2, seed=3)):
        add(client, data, f"img-{i}")

    def label() -> None:
        assert client.get("/custom/assign/img-0/positive/cat").status_code == 200
        assert client.get("/custom/assign/img-1/negative/cat").status_code == 200

    label()
    doomed = client.get("/custom/train/cat").json()["task_id"]  # waits: no worker is running
    assert client.get("/custom/delete/cat").status_code == 200
    label()
    again = client.get("/custom/train/cat").json()
    run_queued_jobs(services)
    status = client.get(f"/status/{again['task_id']}").json()
    assert status["status"] == "finished", (again, doomed, status.get("error"))
    assert not again["already_queued"]
    # The doomed task trained nothing: it stopped at once, saying why, and made no version.
    stopped = client.get(f"/status/{doomed}").json()
    assert stopped["status"] == "failed" and "was deleted after this training was asked for" in stopped["error"]
    assert [v["version"] for v in client.get("/custom/versions/cat").json()["versions"]] == [status["result"]["version"]]


def test_an_embedding_job_killed_mid_way_is_finished_by_another_worker_without_duplicates(
    leased: Services, start_worker: Callable[[str], Process]
) -> None:
    from shared.domain.images import add_images
    from tests.support.photos import CAT, crops

    photos = [(f"{i}.jpg", data) for i, data in enumerate(crops(CAT, 400, seed=3))]
    added = add_images(leased, photos, [])
    assert all(r.error is None for r in added)
    stored = {r.image["image_id"] for r in added if r.image}  # a crop drawn twice is stored once
    library = leased.library
    first = start_worker("embed-a")
    until(lambda: len(library.packs()) >= 1, "a first pack of 256 written", timeout=300)
    first.kill()  # mid-job: more rows still waiting
    assert library.pending_count() > 0
    start_worker("embed-b")
    until(lambda: library.pending_count() == 0 and not leased.queue.library_tasks(), "every row embedded", timeout=300)
    assert sum(library.packs().values()) == len(stored)  # every row in exactly one recorded pack
