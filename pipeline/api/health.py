"""``/healthz``: can this API reach Elasticsearch, Redis and at least one worker?

The answer says which check failed, never how (exception texts name internal hosts and ports);
the cause goes to the log.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline.api.deps import ApiState, State

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


def _unreachable(name: str, exc: Exception) -> dict:
    log.warning("health check: %s unreachable: %r", name, exc)
    return {"ok": False, "error": "unreachable"}


def _check(state: ApiState) -> dict[str, dict]:
    checks: dict[str, dict] = {}
    try:
        # this deployment's indices only: another tenant's red index is not our outage
        index = f"{state.settings.index_alias}-*"
        health = state.es.cluster.health(index=index, timeout="2s")
        checks["elasticsearch"] = {
            "ok": health["status"] in ("green", "yellow"),
            "status": health["status"],
        }
    except Exception as exc:  # any failure means "not reachable" to an operator
        checks["elasticsearch"] = _unreachable("Elasticsearch", exc)
    try:
        state.celery.backend.client.ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:
        checks["redis"] = _unreachable("Redis", exc)
    try:
        replies = state.celery.control.ping(timeout=1.0) or []
        checks["workers"] = {"ok": bool(replies), "count": len(replies)}
    except Exception as exc:
        checks["workers"] = _unreachable("the workers", exc)
    return checks


@router.get("/healthz", summary="Reachability of Elasticsearch, Redis and the workers")
async def healthz(state: State) -> JSONResponse:
    checks = await run_in_threadpool(_check, state)
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)
