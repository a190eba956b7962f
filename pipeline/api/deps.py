"""What every route shares: the application state (settings, clients, the model, merchant
services) and the FastAPI dependencies that hand it out. Routers import this, never ``app``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated

from elasticsearch import Elasticsearch
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from redis import Redis

from pipeline import metrics
from pipeline.encoders import LazyEncoder
from pipeline.jobs import VitrineCelery, queue_depth
from pipeline.merchants.apikeys import ApiKeyStore
from pipeline.merchants.ratelimit import RateLimiter, RedisCounter
from pipeline.merchants.shoppers import ShopperHistory
from pipeline.search.searcher import Searcher
from pipeline.settings import VitrineSettings
from pipeline.storage import ImageStore


@dataclass
class MerchantServices:
    """What the merchant routes share: Redis-backed keys and limits, the image store."""

    keys: ApiKeyStore
    limiter: RateLimiter  # writes, per API key
    search_limiter: RateLimiter  # searches and embeds, per API key
    address_limiter: RateLimiter  # searches and embeds without a key, per client address
    store: ImageStore
    shoppers: ShopperHistory  # browsing history for recommendations


@dataclass
class ApiState:
    """Everything the routes share, one per application. The parts below are built on first
    use (building two in a race is harmless)."""

    settings: VitrineSettings
    es: Elasticsearch
    celery: VitrineCelery
    encoder: LazyEncoder = field(init=False)  # loaded in the lifespan

    def __post_init__(self) -> None:
        self.encoder = LazyEncoder(self.settings)

    @cached_property
    def searcher(self) -> Searcher:
        """It caches the index's model for a few seconds, so there is one per application."""
        return Searcher(self.settings, self.es, self.encoder)

    @cached_property
    def metrics_registry(self) -> CollectorRegistry:
        """What ``/metrics`` serves: the process's metrics (those of every API process in
        multiprocess mode, ``vitrine serve --workers``) and the queue's depth."""
        return metrics.registry(
            queue_depth(self.celery.backend.client, self.settings.queue),
            multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        )

    @cached_property
    def merchant_services(self) -> MerchantServices:
        settings = self.settings
        redis = Redis.from_url(settings.redis_url, socket_timeout=5)
        counter = RedisCounter(redis)
        return MerchantServices(
            keys=ApiKeyStore(redis, settings.redis_prefix),
            limiter=RateLimiter(
                counter,
                limit=settings.upload_rate_limit,
                window_s=settings.upload_rate_window_s,
                prefix=settings.redis_prefix,
            ),
            search_limiter=RateLimiter(
                counter,
                limit=settings.search_rate_limit,
                window_s=settings.search_rate_window_s,
                prefix=f"{settings.redis_prefix}:search",
            ),
            address_limiter=RateLimiter(
                counter,
                limit=settings.search_rate_limit_per_address,
                window_s=settings.search_rate_window_s,
                prefix=f"{settings.redis_prefix}:search-address",
            ),
            store=ImageStore(settings.images_dir),
            shoppers=ShopperHistory(
                redis,
                prefix=settings.redis_prefix,
                ttl_s=settings.shopper_history_ttl_s,
                max_events=settings.shopper_history_max_events,
            ),
        )


def api_state(request: Request) -> ApiState:
    """FastAPI dependency: the application's shared state."""
    return request.app.state.vitrine


def merchant_services(state: Annotated[ApiState, Depends(api_state)]) -> MerchantServices:
    return state.merchant_services


def get_searcher(state: Annotated[ApiState, Depends(api_state)]) -> Searcher:
    return state.searcher


State = Annotated[ApiState, Depends(api_state)]
Services = Annotated[MerchantServices, Depends(merchant_services)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
