"""The per-process connections every function and the worker use, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import redis

from shared.batching import MicroBatcher
from shared.jobs import TrainingQueue
from shared.models.archive import ArchiveLimits
from shared.models.backbone import LITE0, Backbone, BackboneSpec, load_backbone
from shared.registry import Registry
from shared.settings import Settings, get_settings
from shared.store import ObjectStore, open_store


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    store: ObjectStore
    registry: Registry
    queue: TrainingQueue
    spec: BackboneSpec = LITE0

    @cached_property
    def backbone(self) -> Backbone:
        """Loaded on first use and kept for the life of the process."""
        s = self.settings
        return load_backbone(s.runtime, s.device, s.torch_threads, str(s.model_cache_dir))

    @cached_property
    def batcher(self) -> MicroBatcher:
        """Shares the backbone between concurrent predict requests, one forward pass per batch."""
        return MicroBatcher(self.backbone, self.settings.predict_batch_size)

    @property
    def archive_limits(self) -> ArchiveLimits:
        s = self.settings
        return ArchiveLimits(s.max_archive_bytes, s.max_archive_members, s.max_tag_length)


def connect_redis(url: str) -> redis.Redis:
    if not url:
        raise RuntimeError("TAGSMITH_REDIS_URL is not set (`tagsmith serve` sets it for its own Redis).")
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=3, health_check_interval=15)


def build_services(settings: Settings) -> Services:
    client = connect_redis(settings.redis_url)
    return Services(
        settings=settings,
        redis=client,
        store=open_store(settings),
        registry=Registry(client, settings.key_prefix),
        queue=TrainingQueue(client, settings),
    )


@lru_cache(maxsize=1)
def get_services() -> Services:
    """The process-wide services for the current environment."""
    return build_services(get_settings())
