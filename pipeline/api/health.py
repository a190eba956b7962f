"""``/healthz``: can this API reach Elasticsearch and Redis, and does a worker consume the
configured queue? A worker that answers but serves another queue leaves jobs queued forever,
so the check asks each worker which queues it consumes (Celery's ``active_queues``).

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
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline.api.deps import ApiState, State
from pipeline.es import mappings

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


def _queue_consumers(state: ApiState) -> dict[str, Any]:
    """Workers that consume the configured queue, among those that answer."""
    queue = state.settings.queue
    inspect = state.celery.control.inspect(timeout=CHECK_TIMEOUT_S / 2)
    replies: dict[str, list[dict]] = inspect.active_queues() or {}
    serving = sum(1 for queues in replies.values() if any(q.get("name") == queue for q in queues))
    check: dict[str, Any] = {"ok": serving > 0, "queue": queue, "count": serving}
    if not serving:
        check["reason"] = f"no worker consumes queue {queue!r}" + (
            f" ({len(replies)} worker(s) answered, serving other queues)" if replies else ""
        )
    return check


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
