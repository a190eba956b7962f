"""Shoppers' browsing history (views, add-to-cart) in Redis, for recommendations.

A shopper is an opaque id chosen by the shop's frontend (e.g. a random id kept in the browser);
nothing else about the person is stored: each event is its kind, the product (merchant id,
product id) and a timestamp. The Redis key is the SHA-256 of the id, so the id itself is not in
the key space either.

Retention: a shopper's history is one Redis list, newest first, capped at ``max_events`` (older
events are dropped on write) and expiring ``ttl_s`` after the shopper's last event; ``forget``
deletes it at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from redis import Redis

SHOPPER_ID_PATTERN = r"^[A-Za-z0-9_-]{8,128}$"
EventKind = Literal["view", "add_to_cart"]


@dataclass(frozen=True)
class ShopperEvent:
    kind: EventKind
    merchant_id: str
    product_id: str
    at: float  # epoch seconds


class ShopperHistory:
    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int, max_events: int):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_events = max_events

    def _key(self, shopper: str) -> str:
        digest = hashlib.sha256(shopper.encode()).hexdigest()
        return f"{self.prefix}:shopper:{digest}"

    def record(self, shopper: str, events: Sequence[ShopperEvent]) -> int:
        """Add events (oldest first in ``events``), trim to the cap, renew the expiry; returns
        how many events the history holds now."""
        key = self._key(shopper)
        ordered = sorted(events, key=lambda e: e.at)
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(key, *[json.dumps(asdict(e), separators=(",", ":")) for e in ordered])
        pipe.ltrim(key, 0, self.max_events - 1)
        pipe.expire(key, self.ttl_s)
        pipe.llen(key)
        return int(pipe.execute()[-1])

    def events(self, shopper: str) -> list[ShopperEvent]:
        """The shopper's events, most recent first (empty for an unknown or expired shopper)."""
        raw = self.redis.lrange(self._key(shopper), 0, self.max_events - 1)
        return [ShopperEvent(**json.loads(item)) for item in raw]  # type: ignore[union-attr]

    def forget(self, shopper: str) -> bool:
        """Delete the shopper's history; False when there was none."""
        return bool(self.redis.delete(self._key(shopper)))
