import hashlib

import pytest

from pipeline.merchants.apikeys import KEY_PATTERN, ApiKeyStore, generate_key, hash_key, key_id_of


class FakeRedis:
    """The few hash commands ApiKeyStore uses, over dicts (bytes out, like redis-py)."""

    def __init__(self):
        self.data: dict[str, dict[str, str]] = {}

    def hsetnx(self, name, key, value):
        table = self.data.setdefault(name, {})
        if key in table:
            return 0
        table[key] = value
        return 1

    def hset(self, name, mapping):
        self.data.setdefault(name, {}).update(mapping)

    def hgetall(self, name):
        return {k.encode(): v.encode() for k, v in self.data.get(name, {}).items()}

    def hget(self, name, key):
        value = self.data.get(name, {}).get(key)
        return value.encode() if value is not None else None

    def hvals(self, name):
        return [v.encode() for v in self.data.get(name, {}).values()]

    def hdel(self, name, key):
        self.data.get(name, {}).pop(key, None)

    def delete(self, name):
        self.data.pop(name, None)


@pytest.fixture
def store():
    return ApiKeyStore(FakeRedis(), "t")


def test_generated_keys_have_the_documented_shape_and_are_unique():
    keys = {generate_key()[0] for _ in range(200)}
    assert len(keys) == 200
    key, key_id = generate_key()
    assert KEY_PATTERN.match(key) and key_id_of(key) == key_id and len(key_id) == 8
    assert key_id_of("vtr_nothex!_abc") is None


def test_only_the_hash_is_stored(store):
    new = store.create("shop-a", name="ci")
    assert hash_key(new.key) == hashlib.sha256(new.key.encode()).hexdigest()
    dump = repr(store.redis.data)
    secret = new.key.split("_", 2)[2]  # "vtr_<id>_<secret>"; the secret may hold "_" itself
    assert new.key not in dump and secret not in dump
    assert hash_key(new.key) in dump


def test_lookup_finds_the_merchant_and_refuses_wrong_keys(store):
    new = store.create("shop-a")
    info = store.lookup(new.key)
    assert info is not None and info.merchant_id == "shop-a" and info.key_id == new.info.key_id
    tampered = new.key[:-1] + ("A" if new.key[-1] != "A" else "B")
    assert store.lookup(tampered) is None
    assert store.lookup("") is None and store.lookup("vtr_short") is None


def test_revoke_by_id_or_key_and_wrong_secret_revokes_nothing(store):
    a, b = store.create("shop-a"), store.create("shop-b")
    wrong_secret = f"vtr_{a.info.key_id}_" + "x" * 43
    assert store.revoke(wrong_secret) is None and store.lookup(a.key) is not None
    assert store.revoke(a.info.key_id).merchant_id == "shop-a"
    assert store.lookup(a.key) is None
    assert store.revoke(b.key).merchant_id == "shop-b"
    assert store.lookup(b.key) is None
    assert store.revoke(a.info.key_id) is None  # already gone
    assert store.revoke("nonsense") is None


def test_list_filters_by_merchant(store):
    store.create("shop-a", name="one")
    store.create("shop-b")
    store.create("shop-a", name="two")
    assert [k.merchant_id for k in store.list()] == ["shop-a", "shop-a", "shop-b"]
    assert {k.name for k in store.list("shop-a")} == {"one", "two"}


def test_invalid_merchant_id_is_refused(store):
    with pytest.raises(ValueError, match="invalid merchant id"):
        store.create("has space")


def test_exported_keys_restored_into_an_empty_redis_work_again(store):
    first = store.create("shop-a", name="ci")
    second = store.create("shop-b")
    exported = store.export()
    assert first.key not in repr(exported)  # hashes only: the copy holds no usable key
    fresh = ApiKeyStore(FakeRedis(), "t")
    assert fresh.lookup(first.key) is None
    assert fresh.restore(exported) == 2
    assert fresh.lookup(first.key) == first.info
    assert fresh.lookup(second.key) == second.info
    assert fresh.revoke(second.info.key_id) == second.info


def test_restore_refuses_records_that_are_not_exports(store):
    with pytest.raises(ValueError):
        store.restore(
            [{"sha256": "x", "merchant_id": "m", "key_id": "zz", "name": "", "created_at": "t"}]
        )
