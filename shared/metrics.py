"""Prometheus metrics: HTTP requests by route template, and what Redis knows at scrape time.

Training outcomes and durations are counted in Redis by RQ callbacks in the worker, so every
API process reports the same numbers, across restarts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from shared.settings import get_settings

log = logging.getLogger("tagsmith")

TRAINING_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no `_created` series: they double the output and nobody graphs them

REQUESTS = Counter(
    "tagsmith_http_requests", "HTTP requests served.", ["method", "route", "status"]
)
LATENCY = Histogram(
    "tagsmith_http_request_duration_seconds", "Time to serve an HTTP request.", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def _training_key(prefix: str) -> str:
    return f"{prefix}:metrics:training"


def on_training_success(job: Any, connection: redis.Redis, result: Any, *args: Any, **kwargs: Any) -> None:
    """RQ success callback (runs in the worker): count the training and its duration."""
    started = job.started_at
    seconds = 0.0
    if started is not None:
        if started.tzinfo is None:
            started = started.replace(tzinfo=timezone.utc)
        seconds = max(0.0, (datetime.now(timezone.utc) - started).total_seconds())
    bucket = next((str(b) for b in TRAINING_BUCKETS if seconds <= b), "+Inf")
    key = _training_key(get_settings().key_prefix)
    with connection.pipeline() as pipe:
        pipe.hincrby(key, "finished", 1)
        pipe.hincrbyfloat(key, "seconds", seconds)
        pipe.hincrby(key, f"le:{bucket}", 1)
        pipe.execute()


def on_training_failure(job: Any, connection: redis.Redis, *exc_info: Any, **kwargs: Any) -> None:
    """RQ failure callback (runs in the worker): count the failed training."""
    connection.hincrby(_training_key(get_settings().key_prefix), "failed", 1)


class RedisCollector(Collector):
    """Queue depth, model and image counts and training statistics, read from Redis per scrape."""

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration; keeps Redis out of import time

    def collect(self) -> Iterator[Any]:
        from shared.context import get_services

        try:
            services = get_services()
            prefix = services.settings.key_prefix
            with services.redis.pipeline() as pipe:
                pipe.llen(services.queue.queue.key)
                pipe.hlen(f"{prefix}:models")
                pipe.zcard(f"{prefix}:images")
                pipe.hgetall(_training_key(prefix))
                depth, models, images, training = pipe.execute()
        except Exception as exc:  # a scrape must answer even while Redis is down
            log.debug("metrics: Redis unavailable: %s", exc)
            yield GaugeMetricFamily("tagsmith_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("tagsmith_redis_up", "Whether Redis answered this scrape.", value=1)
        yield GaugeMetricFamily("tagsmith_queue_depth", "Trainings waiting in the queue.", value=depth)
        yield GaugeMetricFamily("tagsmith_models", "Tags with a current model.", value=models)
        yield GaugeMetricFamily("tagsmith_images", "Stored images.", value=images)
        stats = {k.decode(): float(v) for k, v in training.items()}
        outcomes = CounterMetricFamily("tagsmith_trainings", "Trainings run by the workers.", labels=["outcome"])
        outcomes.add_metric(["finished"], stats.get("finished", 0.0))
        outcomes.add_metric(["failed"], stats.get("failed", 0.0))
        yield outcomes
        cumulative, buckets = 0.0, []
        for bound in (*TRAINING_BUCKETS, math.inf):
            name = "+Inf" if bound == math.inf else str(bound)
            cumulative += stats.get(f"le:{name}", 0.0)
            buckets.append((name, cumulative))
        yield HistogramMetricFamily(
            "tagsmith_training_duration_seconds", "Time from a training's start to its new version.",
            buckets=buckets, sum_value=stats.get("seconds", 0.0),
        )


REGISTRY.register(RedisCollector())


def render() -> bytes:
    """Every metric in Prometheus' text format."""
    return generate_latest(REGISTRY)
