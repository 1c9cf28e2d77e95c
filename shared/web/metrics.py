"""Prometheus metrics: HTTP requests by route template, and what Redis knows at scrape time.

Training outcomes and durations are counted in Redis by the queue's job callbacks in the worker
(``shared.data.jobs``), so every API process reports the same numbers, across restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from shared.domain.services import Services

log = logging.getLogger("tagsmith")

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: they double the output and nobody graphs them

REQUESTS = Counter(
    "tagsmith_http_requests", "HTTP requests served.", ["method", "route", "status"]
)
LATENCY = Histogram(
    "tagsmith_http_request_duration_seconds", "Time to serve an HTTP request.", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class RedisCollector(Collector):
    """Queue depth, model and image counts and training statistics, read from Redis per scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: Redis is read per scrape only

    def collect(self) -> Iterator[Any]:
        services = self.services
        try:
            models, images = services.registry.counts()
            training = services.queue.training_stats()
        except Exception as exc:  # a scrape must answer even while Redis is down
            log.debug("metrics: Redis unavailable: %s", exc)
            yield GaugeMetricFamily("tagsmith_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("tagsmith_redis_up", "Whether Redis answered this scrape.", value=1)
        yield GaugeMetricFamily("tagsmith_queue_depth", "Trainings waiting in the queue.", value=training["depth"])
        yield GaugeMetricFamily("tagsmith_models", "Tags with a current model.", value=models)
        yield GaugeMetricFamily("tagsmith_images", "Stored images.", value=images)
        outcomes = CounterMetricFamily("tagsmith_trainings", "Trainings run by the workers.", labels=["outcome"])
        outcomes.add_metric(["finished"], training["finished"])
        outcomes.add_metric(["failed"], training["failed"])
        yield outcomes
        yield HistogramMetricFamily(
            "tagsmith_training_duration_seconds", "Time from a training's start to its new version.",
            buckets=training["buckets"], sum_value=training["seconds"],
        )


def render(services: Services) -> bytes:
    """Every metric in Prometheus' text format: this process's HTTP counters, then what Redis
    knows now."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(RedisCollector(services))
    return generate_latest(REGISTRY) + generate_latest(scrape)
