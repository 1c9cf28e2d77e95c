"""``tagsmith worker``: an RQ worker that runs jobs in its own process, so the backbone loads once."""

from __future__ import annotations

import logging

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from shared.context import get_services


def run_worker(burst: bool = False) -> None:
    services = get_services()
    services.backbone  # load the weights before the first job, not during it
    worker = SimpleWorker(
        [services.queue.queue], connection=services.redis, serializer=JSONSerializer
    )
    logging.getLogger("tagsmith").info("worker ready on queue %s", services.settings.queue_name)
    worker.work(burst=burst, logging_level="INFO")
