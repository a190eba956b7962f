"""``/healthz``: can this API reach Elasticsearch and Redis, and does a worker consume the
configured queue with the right model? A worker that answers but serves another queue leaves
jobs queued forever, and one with another model fails every job, so the check asks each worker
which queues it consumes (Celery's ``active_queues``) and reads the model each worker's pool
processes advertise in Redis (``pipeline.jobs.advertise_model``); the right model is the one
of the alias's write index. The answer lists, per queue, the workers and their models.

The checks run in parallel and the answer comes within ``TOTAL_TIMEOUT_S`` even when a service
hangs. Reasons name the failing part, never the raw connection error (it shows internal
addresses); the detail goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from pipeline.api.deps import ApiState, State
from pipeline.es import mappings
from pipeline.es.client import write_index_info
from pipeline.jobs import advertised_models

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])

#: Each check's own timeout; the whole answer waits at most ``TOTAL_TIMEOUT_S``.
CHECK_TIMEOUT_S = 2.0
TOTAL_TIMEOUT_S = 3.0

# A few threads, shared: a hung service holds at most these, and later checks time out.
_executor = ThreadPoolExecutor(max_workers=6, thread_name_prefix="healthz")


def _elasticsearch(state: ApiState) -> dict[str, Any]:
    es = state.es.options(request_timeout=CHECK_TIMEOUT_S)
    # this deployment's indices only: another tenant's red index is not our outage
    index = mappings.product_index_pattern(state.settings.index_alias)
    status = es.cluster.health(index=index, timeout=f"{CHECK_TIMEOUT_S:.0f}s")["status"]
    return {"ok": status in ("green", "yellow"), "status": status}


def _redis(state: ApiState) -> dict[str, Any]:
    state.celery.backend.client.ping()
    return {"ok": True}


def _expected_model(state: ApiState) -> str | None:
    """The model of the alias's write index (what workers must embed with), if it exists."""
    info = write_index_info(
        state.es.options(request_timeout=CHECK_TIMEOUT_S), state.settings.index_alias
    )
    return info.model_id if info else None


def queue_report(
    replies: dict[str, list[dict]], adverts: dict[str, set[str]], queue: str, model_id: str | None
) -> dict[str, Any]:
    """Per queue, the workers consuming it and the models they advertise; ``ok`` when one
    consumes ``queue`` with ``model_id`` (any model while no index can say which)."""
    queues: dict[str, dict[str, Any]] = {}
    serving = 0
    for node, consumed in replies.items():
        models = sorted(adverts.get(node, ())) or ["unknown"]  # still loading, or not advertising
        for name in sorted({q.get("name", "") for q in consumed}):
            entry = queues.setdefault(name, {"workers": 0, "models": {}})
            entry["workers"] += 1
            for model in models:
                entry["models"][model] = entry["models"].get(model, 0) + 1
            if name == queue and (model_id is None or model_id in models):
                serving += 1
    check: dict[str, Any] = {
        "ok": serving > 0,
        "queue": queue,
        "model_id": model_id,
        "count": serving,
        "queues": queues,
    }
    if not serving:
        here = queues.get(queue)
        if here:
            seen = ", ".join(repr(m) for m in sorted(here["models"]))
            check["reason"] = (
                f"no worker consumes queue {queue!r} with model {model_id!r} "
                f"({here['workers']} worker(s) there run {seen})"
            )
        else:
            check["reason"] = f"no worker consumes queue {queue!r}" + (
                f" ({len(replies)} worker(s) answered, serving other queues)" if replies else ""
            )
    return check


def _queue_consumers(state: ApiState) -> dict[str, Any]:
    """Workers that consume the configured queue with the index's model, among those that
    answer (``active_queues``) and the models their pool processes advertise in Redis."""
    inspect = state.celery.control.inspect(timeout=CHECK_TIMEOUT_S / 2)
    replies: dict[str, list[dict]] = inspect.active_queues() or {}
    adverts = advertised_models(state.celery.backend.client)
    try:
        model_id = _expected_model(state)
    except Exception as exc:  # the elasticsearch check reports it; count workers of any model
        log.warning("healthz: model of the write index unknown: %r", exc)
        model_id = None
    return queue_report(replies, adverts, state.settings.queue, model_id)


CHECKS: dict[str, Callable[[ApiState], dict[str, Any]]] = {
    "elasticsearch": _elasticsearch,
    "redis": _redis,
    "workers": _queue_consumers,
}


def _check(state: ApiState) -> dict[str, dict]:
    futures = {name: _executor.submit(check, state) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=TOTAL_TIMEOUT_S)
    results: dict[str, dict] = {}
    for name, future in futures.items():
        if not future.done():
            results[name] = {"ok": False, "reason": f"no answer within {TOTAL_TIMEOUT_S:g} s"}
            continue
        try:
            results[name] = future.result()
        except Exception as exc:  # any failure means "not reachable" to an operator
            log.warning("healthz: %s check failed: %r", name, exc)
            results[name] = {"ok": False, "reason": f"unreachable ({type(exc).__name__})"}
    return results


@router.get(
    "/healthz",
    summary="Reachability of Elasticsearch and Redis; whether a worker serves the job queue",
)
async def healthz(state: State) -> JSONResponse:
    checks = await run_in_threadpool(_check, state)
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics: searches by shape, query embeddings, queue depth",
    response_class=Response,
)
def prometheus_metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
