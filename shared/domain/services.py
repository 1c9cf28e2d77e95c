"""The resources of one process: its settings and connections, built once at its start.

Every process (the gateway, a function service, a worker, a command) builds one ``Services``
from its ``Settings`` in its entry point and passes it down: HTTP handlers find it in
``request.state``, jobs get it from their worker, domain functions take it as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import redis

from shared.core.process import KeyedLocks
from shared.core.settings import Settings
from shared.data.jobs import TrainingQueue
from shared.data.library import Library
from shared.data.registry import Registry
from shared.data.store import ObjectStore, open_store
from shared.domain.catalog import HeadCache
from shared.domain.search import RowCache, SimilarIndex
from shared.models.archive import ArchiveLimits
from shared.models.backbone import LITE0, Backbone, BackboneSpec, open_backbone
from shared.models.decoding import PixelBudget


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    store: ObjectStore
    registry: Registry
    library: Library
    queue: TrainingQueue
    decode_budget: PixelBudget
    heads: HeadCache = field(default_factory=HeadCache)  # the current heads, one cache per process
    thumbnail_locks: KeyedLocks = field(default_factory=KeyedLocks)
    rows: RowCache = field(default_factory=RowCache)  # the library's row table, read as it grows
    similar: SimilarIndex = field(default_factory=SimilarIndex)  # the short vectors /similar searches
    spec: BackboneSpec = LITE0
    opened_backbone: Backbone | None = None  # one already opened (tests share theirs), else opened on first use

    @cached_property
    def backbone(self) -> Backbone:
        """The backbone on the configured runtime, opened once for the life of the process."""
        if self.opened_backbone is not None:
            return self.opened_backbone
        s = self.settings
        return open_backbone(s.runtime, s.device, s.torch_threads, s.model_cache_dir)

    @property
    def archive_limits(self) -> ArchiveLimits:
        s = self.settings
        return ArchiveLimits(s.max_archive_bytes, s.max_archive_members)


def connect_redis(url: str) -> redis.Redis:
    if not url:
        raise RuntimeError("TAGSMITH_REDIS_URL is not set (`tagsmith serve` sets it for its own Redis).")
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=3, health_check_interval=15)


def build_services(settings: Settings, backbone: Backbone | None = None) -> Services:
    """Connections for ``settings`` (Redis connects on first use); ``backbone`` if one is open already."""
    client = connect_redis(settings.redis_url)
    registry = Registry(client, settings.key_prefix)
    return Services(
        settings=settings,
        redis=client,
        store=open_store(settings),
        registry=registry,
        library=Library(client, registry.library_keys),
        queue=TrainingQueue(client, settings),
        decode_budget=PixelBudget(settings.decode_budget_pixels),
        opened_backbone=backbone,
    )
