"""Application factory: one settings object, one ES client, the encoder loaded once in the
lifespan (not at import, not per request), and the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from celery import Celery
from elasticsearch import Elasticsearch
from fastapi import FastAPI, Request

from pipeline.encoders import Encoder, get_encoder
from pipeline.indexing import make_client
from pipeline.settings import VitrineSettings


@dataclass
class ApiState:
    settings: VitrineSettings
    es: Elasticsearch
    celery: Celery
    encoder: Encoder | None = None  # loaded in the lifespan

    def get_encoder(self) -> Encoder:
        if self.encoder is None:
            self.encoder = get_encoder(self.settings)
        return self.encoder


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
