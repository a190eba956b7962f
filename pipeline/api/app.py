"""Application factory: one settings object, one ES client, the encoder loaded once in the
lifespan (not at import, not per request), and the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from elasticsearch import Elasticsearch
from fastapi import FastAPI, Request
from redis import Redis

from pipeline.apikeys import ApiKeyStore
from pipeline.encoders import Encoder, get_encoder
from pipeline.indexing import make_client
from pipeline.ratelimit import RateLimiter, RedisCounter
from pipeline.search import Searcher
from pipeline.settings import VitrineSettings
from pipeline.storage import ImageStore


@dataclass
class MerchantServices:
    """What the merchant routes share: Redis-backed keys and limits, the image store."""

    keys: ApiKeyStore
    limiter: RateLimiter
    store: ImageStore


@dataclass
class ApiState:
    """Everything the routes share, one per application. The parts below are built on first
    use (building two in a race is harmless)."""

    settings: VitrineSettings
    es: Elasticsearch
    celery: Celery
    encoder: Encoder | None = None  # loaded in the lifespan

    def get_encoder(self) -> Encoder:
        if self.encoder is None:
            self.encoder = get_encoder(self.settings)
        return self.encoder

    @cached_property
    def searcher(self) -> Searcher:
        """It caches the index's model for a few seconds, so there is one per application."""
        return Searcher(self.settings, self.es, self.get_encoder)

    @cached_property
    def merchant_services(self) -> MerchantServices:
        settings = self.settings
        redis = Redis.from_url(settings.redis_url, socket_timeout=5)
        return MerchantServices(
            keys=ApiKeyStore(redis, settings.redis_prefix),
            limiter=RateLimiter(
                RedisCounter(redis),
                limit=settings.upload_rate_limit,
                window_s=settings.upload_rate_window_s,
                prefix=settings.redis_prefix,
            ),
            store=ImageStore(settings.images_dir),
        )


def api_state(request: Request) -> ApiState:
    """FastAPI dependency: the application's shared state."""
    return request.app.state.vitrine


def create_app(settings: VitrineSettings, *, load_model: bool = True) -> FastAPI:
    from workers.app import create_celery

    state = ApiState(settings=settings, es=make_client(settings), celery=create_celery(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load_model:
            state.get_encoder()
        yield
        state.es.close()

    app = FastAPI(
        title="Vitrine",
        version="0.1.0",
        description="Visual product search for Elasticsearch shops: embed images and texts, "
        "search products, upload products.",
        lifespan=lifespan,
    )
    app.state.vitrine = state
    from pipeline.api import health

    app.include_router(health.router)
    from pipeline.api import search

    app.include_router(search.router)
    from pipeline.api import products

    app.include_router(products.router)
    from pipeline.api import page

    app.include_router(page.router)
    return app
