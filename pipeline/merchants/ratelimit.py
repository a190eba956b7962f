"""Fixed-window rate limiting per API key, counted in Redis so every API process shares it.

Each key gets ``limit`` hits per window of ``window_s`` seconds (windows aligned to the epoch);
the counter for a window is a Redis key named after the window, so it needs no reset and simply
expires. A refused hit reports when the current window ends (``Retry-After``). The decision maths
is pure and takes an injectable clock; the counter is a small protocol with a Redis and an
in-memory implementation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis import Redis


class Counter(Protocol):
    def incr(self, key: str, ttl_s: int) -> int:
        """Increment ``key`` (created at 0 with a time to live) and return the new count."""


class RedisCounter:
    def __init__(self, redis: Redis):
        self.redis = redis

    def incr(self, key: str, ttl_s: int) -> int:
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, ttl_s)
        count, _ = pipe.execute()
        return int(count)


class MemoryCounter:
    """For tests and single-process use; expired windows are never read again (keys differ)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def incr(self, key: str, ttl_s: int) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int  # seconds until the window ends (0 when allowed)
    reset_s: int  # seconds until the window ends


def window_bounds(now: float, window_s: int) -> tuple[int, int]:
    """``(window number, seconds until it ends, rounded up, at least 1)``."""
    index = math.floor(now / window_s)
    remaining = (index + 1) * window_s - now
    return index, max(1, math.ceil(remaining))


class RateLimiter:
    def __init__(
        self,
        counter: Counter,
        *,
        limit: int,
        window_s: int,
        prefix: str = "vitrine",
        clock: Callable[[], float] = time.time,
    ):
        if limit < 1 or window_s < 1:
            raise ValueError("rate limit and window must be at least 1")
        self.counter = counter
        self.limit = limit
        self.window_s = window_s
        self.prefix = prefix
        self.clock = clock

    def hit(self, subject: str) -> Decision:
        """Count one hit for ``subject`` (an API key id) and decide whether it may go on."""
        index, reset_s = window_bounds(self.clock(), self.window_s)
        count = self.counter.incr(f"{self.prefix}:ratelimit:{subject}:{index}", self.window_s + 1)
        allowed = count <= self.limit
        return Decision(
            allowed=allowed,
            limit=self.limit,
            remaining=max(0, self.limit - count),
            retry_after_s=0 if allowed else reset_s,
            reset_s=reset_s,
        )
