"""Cheap per-stage timers for the ingest path: where a worker's time goes (queue wait, decode,
preprocess, forward pass, Elasticsearch writes, refresh).

A ``StageProfile`` adds up seconds and items per stage. Code anywhere below the worker records
into the profile of the batch being processed with ``stage(name)``, a no-op when no profile is
active, so the encoders and the Elasticsearch layer need no profile argument. One module, so that
metrics (e.g. Prometheus) can hook ``StageProfile.add`` later. Timers cost about a microsecond.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Stages in the order a product passes them: the queue, the default processors (named as in
#: the chain; ``preprocess`` and ``forward`` are timed inside ``embed_image``), near-duplicate
#: matching (its ``msearch`` and grouping), Elasticsearch.
#: Other stages (plugin processors) are listed after these, in the order they were first seen.
STAGES = (
    "queue_wait",
    "decode_image",
    "image_quality",
    "phash",
    "embed_image",
    "preprocess",
    "forward",
    "auto_tag",
    "duplicate_match",
    "es_lookup",
    "es_bulk",
    "refresh",
)


@dataclass
class StageProfile:
    """Seconds and item counts per stage, plus batches and products seen; thread-safe."""

    seconds: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    products: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float, items: int = 0) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.items[stage] = self.items.get(stage, 0) + items

    def merge(self, other: StageProfile) -> None:
        """Add another profile (e.g. one batch's) into this one."""
        for stage, seconds in other.seconds.items():
            self.add(stage, seconds, other.items.get(stage, 0))
        with self._lock:
            self.batches += other.batches
            self.products += other.products

    def to_dict(self) -> dict:
        with self._lock:
            return {
                "batches": self.batches,
                "products": self.products,
                "seconds": {s: round(v, 6) for s, v in self.ordered(self.seconds)},
                "items": dict(self.ordered(self.items)),
            }

    @classmethod
    def from_dict(cls, data: dict) -> StageProfile:
        return cls(
            seconds=dict(data.get("seconds", {})),
            items=dict(data.get("items", {})),
            batches=int(data.get("batches", 0)),
            products=int(data.get("products", 0)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @staticmethod
    def ordered(values: dict) -> list:
        rank = {stage: i for i, stage in enumerate(STAGES)}
        return sorted(values.items(), key=lambda kv: rank.get(kv[0], len(STAGES)))

    def summary(self) -> str:
        """One line: ms per product and share of the timed total, per stage."""
        total = sum(self.seconds.values()) or 1.0
        per = max(1, self.products)
        parts = [
            f"{stage} {1000 * seconds / per:.1f} ms ({100 * seconds / total:.0f}%)"
            for stage, seconds in self.ordered(self.seconds)
        ]
        return f"{self.products} products in {self.batches} batches, per product: " + ", ".join(
            parts
        )


_active: contextvars.ContextVar[StageProfile | None] = contextvars.ContextVar(
    "vitrine_stage_profile", default=None
)


@contextmanager
def active(profile: StageProfile) -> Iterator[StageProfile]:
    """Make ``profile`` the one that ``stage`` records into, in this context."""
    token = _active.set(profile)
    try:
        yield profile
    finally:
        _active.reset(token)


@contextmanager
def stage(name: str, items: int = 0) -> Iterator[None]:
    """Time the block into the active profile (if any) under ``name``."""
    profile = _active.get()
    if profile is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        profile.add(name, time.perf_counter() - started, items)


def record(name: str, seconds: float, items: int = 0) -> None:
    """Add an already measured duration (e.g. queue wait) to the active profile, if any."""
    profile = _active.get()
    if profile is not None:
        profile.add(name, seconds, items)
