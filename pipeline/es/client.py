"""The Elasticsearch client of a process, and what the alias's write index says about itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError
from elasticsearch.serializer import NdjsonSerializer, OrjsonSerializer

from pipeline.settings import VitrineSettings


class OrjsonNdjsonSerializer(NdjsonSerializer):
    """Bulk and msearch bodies through orjson, like single requests (``OrjsonSerializer``):
    a 512-d vector serialises about ten times faster than with the json module."""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


#: The client's serialisers: orjson for JSON and NDJSON (the compatibility mimetypes follow).
SERIALIZERS = {
    OrjsonSerializer.mimetype: OrjsonSerializer(),
    OrjsonNdjsonSerializer.mimetype: OrjsonNdjsonSerializer(),
}


def make_client(settings: VitrineSettings) -> Elasticsearch:
    auth: dict[str, Any] = {}
    if settings.es_api_key:
        auth["api_key"] = settings.es_api_key.get_secret_value()
    elif settings.es_username:
        password = settings.es_password.get_secret_value() if settings.es_password else ""
        auth["basic_auth"] = (settings.es_username, password)
    if settings.es_ca_certs:
        auth["ca_certs"] = str(settings.es_ca_certs)
    return Elasticsearch(
        settings.es_hosts,
        request_timeout=settings.es_request_timeout_s,
        retry_on_timeout=True,
        max_retries=3,
        retry_on_status=(502, 503, 504),
        serializers=SERIALIZERS,
        **auth,
    )


def is_transient_es_error(exc: BaseException) -> bool:
    """Elasticsearch unreachable, timed out or overloaded: worth retrying later."""
    if isinstance(exc, TransportError):  # connection refused, timeout
        return True
    return isinstance(exc, ApiError) and exc.meta.status in (429, 502, 503, 504)


@dataclass(frozen=True)
class IndexInfo:
    """A concrete product index and what its ``_meta`` says: the model whose vectors it holds,
    and (``meta``) whose index it is, the re-embed queue, the index it replaced."""

    index: str
    model_id: str
    dims: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def index_info(index: str, mappings: dict[str, Any]) -> IndexInfo:
    """``IndexInfo`` from an index's ``mappings`` (as ``GET <index>/_mapping`` returns it)."""
    meta = mappings.get("_meta", {})
    return IndexInfo(index, str(meta.get("model_id", "")), int(meta.get("dims", 0)), dict(meta))


def write_index_info(es: Elasticsearch, alias: str) -> IndexInfo | None:
    """The index behind ``alias`` (its write index if it has several) and its model, or None
    if the alias does not exist."""
    try:
        aliases = es.indices.get_alias(name=alias)
    except NotFoundError:
        return None
    writers = [i for i, a in aliases.items() if a["aliases"][alias].get("is_write_index", True)]
    index = writers[0] if writers else sorted(aliases)[-1]
    return index_info(index, es.indices.get_mapping(index=index)[index]["mappings"])
