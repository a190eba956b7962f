"""Merchant API keys, kept in Redis as SHA-256 hashes.

A key looks like ``vtr_<key id>_<secret>``: the key id (8 hex characters) is public and names the
key in listings and revocations; the secret is 32 random bytes. Only the SHA-256 of the whole key
is stored (a fast hash is enough for a 256-bit random secret: there is nothing to brute-force),
so a copy of Redis does not reveal usable keys. The plaintext is shown once, at creation.

Redis runs with its append-only file, so keys survive a restart. For a Redis that lost its data,
``export``/``restore`` (``vitrine keys export``/``import``) keep a copy elsewhere: it holds only
hashes and names, so merchants keep their keys and the copy reveals no usable key.

Redis layout, under ``<prefix>:``:
  ``apikey:<sha256>``  hash: merchant_id, key_id, name, created_at
  ``apikey-ids``       hash: key_id -> sha256 (to list keys and to revoke by key id)
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from redis import Redis

from pipeline.documents import ID_PATTERN

KEY_PREFIX = "vtr_"
KEY_PATTERN = re.compile(r"^vtr_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")
KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{8}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new ``(key, key_id)``."""
    key_id = secrets.token_hex(4)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(key: str) -> str | None:
    match = KEY_PATTERN.match(key)
    return match.group(1) if match else None


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    merchant_id: str
    name: str
    created_at: str


@dataclass(frozen=True)
class NewApiKey:
    key: str  # plaintext: shown once, never stored
    info: ApiKey


class ApiKeyStore:
    def __init__(self, redis: Redis, prefix: str = "vitrine"):
        self.redis = redis
        self.prefix = prefix

    def _record(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    @property
    def _ids(self) -> str:
        return f"{self.prefix}:apikey-ids"

    def create(self, merchant_id: str, *, name: str = "") -> NewApiKey:
        if not re.match(ID_PATTERN, merchant_id):
            raise ValueError(f"invalid merchant id {merchant_id!r} (allowed: {ID_PATTERN})")
        while True:
            key, key_id = generate_key()
            if self.redis.hsetnx(self._ids, key_id, hash_key(key)):
                break  # key ids are short: make sure this one is not taken
        info = ApiKey(key_id, merchant_id, name, datetime.now(UTC).isoformat(timespec="seconds"))
        self.redis.hset(
            self._record(hash_key(key)),
            mapping={
                "merchant_id": merchant_id,
                "key_id": key_id,
                "name": name,
                "created_at": info.created_at,
            },
        )
        return NewApiKey(key, info)

    def lookup(self, key: str) -> ApiKey | None:
        """The key's record, or None for an unknown, revoked or malformed key."""
        if not KEY_PATTERN.match(key):
            return None
        return self._load(hash_key(key))

    def _load(self, digest: str) -> ApiKey | None:
        # casts: redis-py's stubs also allow an async client's awaitables
        raw = cast(dict[Any, Any], self.redis.hgetall(self._record(digest)))
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        return ApiKey(data["key_id"], data["merchant_id"], data.get("name", ""), data["created_at"])

    def revoke(self, key_or_id: str) -> ApiKey | None:
        """Revoke by full key or by key id; returns what was revoked, None if nothing matched."""
        key_id = key_or_id if KEY_ID_PATTERN.match(key_or_id) else key_id_of(key_or_id)
        if key_id is None:
            return None
        stored = cast("bytes | str | None", self.redis.hget(self._ids, key_id))
        if stored is None:
            return None
        digest = _text(stored)
        if key_id != key_or_id and digest != hash_key(key_or_id):
            return None  # right id, wrong secret: not this key
        info = self._load(digest)
        self.redis.delete(self._record(digest))
        self.redis.hdel(self._ids, key_id)
        return info

    def list(self, merchant_id: str | None = None) -> list[ApiKey]:
        keys = []
        for digest in cast(list[Any], self.redis.hvals(self._ids)):
            info = self._load(_text(digest))
            if info and (merchant_id is None or info.merchant_id == merchant_id):
                keys.append(info)
        return sorted(keys, key=lambda k: (k.merchant_id, k.created_at, k.key_id))

    def export(self) -> builtins.list[dict[str, str]]:
        """Every key's stored record (hash, merchant, key id, name, creation time)."""
        records = []
        for digest in cast(list[Any], self.redis.hvals(self._ids)):
            raw = cast(dict[Any, Any], self.redis.hgetall(self._record(_text(digest))))
            if raw:
                records.append(
                    {"sha256": _text(digest)} | {_text(k): _text(v) for k, v in raw.items()}
                )
        return sorted(records, key=lambda r: (r["merchant_id"], r["created_at"], r["key_id"]))

    def restore(self, records: builtins.list[dict[str, str]]) -> int:
        """Put exported records back (existing ones are overwritten); returns how many."""
        for record in records:
            fields = {k: record[k] for k in ("merchant_id", "key_id", "name", "created_at")}
            digest = record["sha256"]
            if not (KEY_ID_PATTERN.match(fields["key_id"]) and SHA256_HEX.match(digest)):
                raise ValueError(f"not an exported key record: {fields['key_id']!r}")
            self.redis.hset(self._ids, mapping={fields["key_id"]: digest})
            self.redis.hset(self._record(digest), mapping=fields)
        return len(records)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
