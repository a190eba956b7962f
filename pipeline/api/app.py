"""Application factory: one settings object, one ES client, the encoder loaded once in the
lifespan (not at import, not per request), and the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from pipeline.api import errors, health, offers, page, products, recommendations, search
from pipeline.api.deps import ApiState
from pipeline.es.client import make_client
from pipeline.jobs import create_celery
from pipeline.settings import VitrineSettings


def create_app(settings: VitrineSettings, *, load_model: bool = True) -> FastAPI:
    state = ApiState(settings=settings, es=make_client(settings), celery=create_celery(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load_model:
            state.encoder()
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
    errors.install(app)
    for module in (
        health,
        search,
        recommendations,
        offers,
        products,
        page,
    ):  # offers before products/{id:path}
        app.include_router(module.router)
    return app
