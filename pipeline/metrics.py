"""Prometheus metrics: the one place Vitrine's metric objects are declared, and how a process
exposes them (the API at ``/metrics``, a worker on ``worker_metrics_port``).

A prefork worker records in its pool processes and serves from its main process, so workers run
prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is in the worker's
environment from its start (``vitrine worker`` sees to it) and the main process merges the
per-process files at each scrape. Without it (the API under uvicorn) metrics live in the
process's default registry.

Hooks elsewhere are one call each: the encoder and the embed_image step (or the batcher that
serves it) time their forward passes (``embedding``), the encoder its loading, the bulk
writer its requests, Celery task signals count jobs (``workers.tasks``), the search route
times each search by shape and the searcher counts its plans. Queue depths are read from Redis
at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

#: Latency buckets in seconds: 5 ms (a cached keyword search) to 2 min (a large CPU batch).
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

JOBS = Counter(
    "vitrine_jobs",
    "Ingest jobs by outcome: done, partially_failed, failed (every product failed), "
    "retrying (a retry was scheduled), error (the job raised).",
    ["task", "outcome"],
)
FAILED_PRODUCTS = Counter(
    "vitrine_failed_products",
    "Products that failed for good, by failure reason (as in the ingest-errors index).",
    ["reason"],
)
IMAGES_EMBEDDED = Counter(
    "vitrine_images_embedded", "Images embedded; rate() of it is images per second."
)
EMBED_BATCH_IMAGES = Histogram(
    "vitrine_embed_batch_images",
    "Images per image forward pass (in a threads-pool worker, from several jobs at once).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
EMBED_BATCH_SECONDS = Histogram(
    "vitrine_embed_batch_seconds", "Time of one encoder forward pass over a batch.", ["kind"],
    buckets=SECONDS,
)  # fmt: skip
BULK_SECONDS = Histogram(
    "vitrine_es_bulk_seconds", "Latency of one Elasticsearch bulk write.", buckets=SECONDS
)
MODEL_LOAD_SECONDS = Histogram(
    "vitrine_model_load_seconds", "Time to load the encoder in a process.", buckets=SECONDS
)
SEARCH_SECONDS = Histogram(
    "vitrine_search_seconds",
    "Search latency by query shape (image, text, image_text, more_like_this, keyword).",
    ["shape"],
    buckets=SECONDS,
)

SEARCH_PLANS = Counter(
    "vitrine_search_plans",
    "Vector searches by the query planner's plan: method (exact, knn) and whether a flat first "
    "pass widened it; the mix to tune search_exact_max_docs by.",
    ["method", "widened"],
)


@contextmanager
def embedding(kind: str, count: int) -> Iterator[None]:
    """Time one forward pass over ``count`` inputs of ``kind`` ("image" or "text")."""
    with EMBED_BATCH_SECONDS.labels(kind).time():
        yield
    if kind == "image":
        IMAGES_EMBEDDED.inc(count)
        EMBED_BATCH_IMAGES.observe(count)


def observe_job(task: str, results: Sequence[dict[str, Any]]) -> None:
    """Count a finished job by outcome and its failed products by reason."""
    failed = [r for r in results if r.get("status") == "failed"]
    for result in failed:
        FAILED_PRODUCTS.labels(result.get("reason") or "unknown").inc()
    outcome = (
        "done" if not failed else "failed" if len(failed) == len(results) else "partially_failed"
    )
    JOBS.labels(task, outcome).inc()


class QueueDepth(Collector):
    """``vitrine_queue_depth{queue}``: jobs waiting in each Celery queue (Redis list length)
    and ``vitrine_queue_unacked{queue}``: jobs delivered to a worker and not yet acknowledged,
    read from Redis at each scrape. ``redis`` is a redis-py client of the broker; ``queues``
    maps each queue to the hash of its unacknowledged messages (``pipeline.jobs.unacked_key``,
    which this layer cannot import)."""

    def __init__(self, redis: Any, queues: Mapping[str, str]) -> None:
        self.redis = redis
        self.queues = dict(sorted(queues.items()))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "vitrine_queue_depth", "Jobs waiting in the queue.", labels=["queue"]
        )
        unacked = GaugeMetricFamily(
            "vitrine_queue_unacked",
            "Jobs delivered to a worker and not yet acknowledged.",
            labels=["queue"],
        )
        for queue, unacked_hash in self.queues.items():
            depth.add_metric([queue], float(self.redis.llen(queue)))
            unacked.add_metric([queue], float(self.redis.hlen(unacked_hash)))
        yield depth
        yield unacked


def registry(*extra: Collector, multiprocess_dir: str | None = None) -> CollectorRegistry:
    """What to serve: this module's metrics (merged over the processes that wrote to
    ``multiprocess_dir`` in multiprocess mode) and ``extra`` collectors."""
    served = CollectorRegistry()
    if multiprocess_dir:
        multiprocess.MultiProcessCollector(served, path=multiprocess_dir)
    else:
        served.register(_Default())
    for collector in extra:
        served.register(collector)
    return served


class _Default(Collector):
    """The default registry's metrics, served from another registry beside extra collectors."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def process_dead(pid: int, multiprocess_dir: str) -> None:
    """Multiprocess bookkeeping when a worker pool process exits."""
    multiprocess.mark_process_dead(pid, multiprocess_dir)
