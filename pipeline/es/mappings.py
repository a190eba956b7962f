"""Pure builders for index templates, index bodies and bulk actions.

The JSON files in ``es_mappings/`` are the single source; these functions only fill in what
depends on the deployment (alias, model, dimensions). All return plain dicts.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from importlib.resources import files
from typing import Any

from pipeline.documents import MATCHING_FIELDS

#: The ``dense_vector`` field holding each image document's vector.
VECTOR_FIELD = "image_vector"

#: What searches return of a hit's ``_source``: all but the vector and the matching fields;
#: ``_WITH_VECTOR`` for callers that re-rank with the vectors (recommendations).
HIT_SOURCE = {"excludes": [VECTOR_FIELD, *MATCHING_FIELDS]}
HIT_SOURCE_WITH_VECTOR = {"excludes": list(MATCHING_FIELDS)}

#: The exact float cosine on kNN's (1 + cos) / 2 scale: re-scoring, exact search and duplicate
#: matching share it. Clamped at 0: ``script_score`` refuses a negative score, which rounding
#: gives an opposite vector (cos -1 scores -6e-8).
COSINE_SCRIPT = (
    f"Math.max(0.0, (cosineSimilarity(params.query_vector, '{VECTOR_FIELD}') + 1.0) / 2.0)"
)


def exact_rescore(vector: list[float], *, window: int) -> dict[str, Any]:
    """Re-score the retrieved documents with the exact float cosine, on kNN's (1 + cos) / 2 scale.

    int8_hnsw ranks by quantised vectors, which can swap near-identical images; the float
    vectors are still stored, so re-scoring the k hits restores the exact order cheaply.
    """
    return {
        "window_size": window,
        "query": {
            "rescore_query": {
                "script_score": {
                    "query": {"match_all": {}},
                    "script": {"source": COSINE_SCRIPT, "params": {"query_vector": vector}},
                }
            },
            "query_weight": 0.0,
            "rescore_query_weight": 1.0,
        },
    }


@cache
def _load(name: str) -> dict[str, Any]:
    data = json.loads(files("es_mappings").joinpath(name).read_text())
    data.pop("_comment", None)
    return data


def es_mapping_file(name: str) -> dict[str, Any]:
    """A fresh copy of a JSON file in ``es_mappings/`` (without its ``_comment``)."""
    return copy.deepcopy(_load(name))


def model_slug(model_id: str) -> str:
    """A model id as it may appear in an index name (lower case, ``[a-z0-9-]``)."""
    return re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")[:120]


#: Separates the alias from the model and generation in a concrete index name. Vitrine names
#: (alias, errors index) may not contain it, so ``<alias>.*`` matches this alias's indices only:
#: never those of an alias it is a prefix of (``shop`` and ``shop-eu``), nor the errors index.
SEPARATOR = "."


def product_index_name(alias: str, model_id: str, generation: int = 1) -> str:
    """``<alias>.<model slug>.<generation>``: one concrete index per model and re-embed."""
    return f"{alias}{SEPARATOR}{model_slug(model_id)}{SEPARATOR}{generation:06d}"


def product_index_pattern(alias: str) -> str:
    """Every concrete product index of ``alias`` and nothing else."""
    return f"{alias}{SEPARATOR}*"


def write_alias(alias: str) -> str:
    """The alias that writers resolve: the serving index, plus the new one during a re-embed.
    ``alias`` itself is the read alias (searches, stored templates)."""
    return f"{alias}{SEPARATOR}write"


def product_template_name(alias: str) -> str:
    return f"{alias}-products"


def products_index_template(alias: str) -> dict[str, Any]:
    """Index template for every concrete product index behind ``alias``."""
    body = es_mapping_file("products_index_template.json")
    body["index_patterns"] = [product_index_pattern(alias)]
    body["_meta"] = {"managed_by": "vitrine", "alias": alias}
    return body


def image_vector_mapping(dims: int) -> dict[str, Any]:
    field = es_mapping_file("image_vector_field.json")
    field["dims"] = dims
    return field


def product_index_body(
    alias: str,
    model_id: str,
    dims: int,
    extra_fields: dict[str, Any] | None = None,
    *,
    serving: bool = True,
    meta: dict[str, Any] | None = None,
    shards: int = 1,
    replicas: int = 0,
) -> dict[str, Any]:
    """Body for creating a concrete product index: the model's vector field, the fields plugin
    processors declare (``extra_fields``), shards and replicas, and its aliases: the write
    alias always, the read alias only for a ``serving`` index (a re-embed's new index gets it
    at the swap).

    Everything else comes from the index template; ``_meta`` records which model's vectors the
    index holds (so a different model can never write into it unnoticed), whose it is
    (``alias``) and anything else the caller adds (``meta``: the re-embed's queue, the index
    it replaces).
    """
    aliases: dict[str, Any] = {write_alias(alias): {}}
    if serving:
        aliases[alias] = {}
    return {
        "settings": {"index": {"number_of_shards": shards, "number_of_replicas": replicas}},
        "mappings": {
            "_meta": {**(meta or {}), "model_id": model_id, "dims": dims, "alias": alias},
            "properties": {**(extra_fields or {}), "image_vector": image_vector_mapping(dims)},
        },
        "aliases": aliases,
    }


def swap_actions(alias: str, *, serving: str, retiring: str) -> list[dict[str, Any]]:
    """One ``_aliases`` call that makes ``serving`` the only index behind the read and the write
    alias and takes ``retiring`` out of both (kept, for rollback, until pruned)."""
    return [
        {"remove": {"index": retiring, "alias": alias}},
        {"remove": {"index": retiring, "alias": write_alias(alias)}},
        {"add": {"index": serving, "alias": alias}},
        {"add": {"index": serving, "alias": write_alias(alias)}},
    ]


def clusters_index_name(alias: str) -> str:
    """Where ``vitrine cluster`` stores centroids: outside the product pattern ``<alias>.*``."""
    return f"{alias}-clusters"


def clusters_index_body() -> dict[str, Any]:
    return es_mapping_file("clusters_index.json")


def errors_index_template(errors_index: str) -> dict[str, Any]:
    body = es_mapping_file("ingest_errors_index_template.json")
    body["index_patterns"] = [errors_index]
    return body


def index_actions(index: str, documents: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[dict]:
    """Bulk ``index`` actions (create or overwrite by id) for ``(_id, _source)`` pairs."""
    for doc_id, source in documents:
        yield {"_op_type": "index", "_index": index, "_id": doc_id, "_source": source}


def delete_actions(documents: Iterable[tuple[str, str]]) -> Iterator[dict]:
    """Bulk ``delete`` actions for ``(index, _id)`` pairs (concrete indices: an alias over
    several indices takes no delete by id)."""
    for index, doc_id in documents:
        yield {"_op_type": "delete", "_index": index, "_id": doc_id}


def product_filter(merchant_id: str, product_id: str) -> list[dict[str, Any]]:
    return [{"term": {"merchant_id": merchant_id}}, {"term": {"product_id": product_id}}]


def stale_documents_query(
    products: Iterable[tuple[tuple[str, str], Iterable[str]]],
) -> dict[str, Any]:
    """Documents of the given ``((merchant_id, product_id), keep_ids)`` products other than
    ``keep_ids``: images the products no longer have."""
    return {
        "bool": {
            "should": [
                {
                    "bool": {
                        "filter": product_filter(merchant_id, product_id),
                        "must_not": [{"ids": {"values": sorted(keep_ids)}}],
                    }
                }
                for (merchant_id, product_id), keep_ids in products
            ],
            "minimum_should_match": 1,
        }
    }


def product_documents_query(merchant_id: str, product_id: str) -> dict[str, Any]:
    return {"bool": {"filter": product_filter(merchant_id, product_id)}}


# --------------------------------------------------------------------------- search templates

#: Stored search templates, one per query shape; ids are ``<alias>-<name>``.
SEARCH_TEMPLATES = (
    "knn",
    "more-like-this",
    "exact",
    "product-vector",
    "keyword",
    "recommend",
    "offers",
)


def search_template_id(alias: str, name: str) -> str:
    """Templates are namespaced by the alias, so several deployments share one cluster."""
    return f"{alias}-{name}"


def facet_aggs() -> dict[str, Any]:
    """The facet aggregations (tags, category, merchant, price buckets) of every search."""
    return copy.deepcopy(_load("search_templates/partials.json")["facet_aggs"])


def search_template_source(name: str) -> str:
    """The mustache source of one template, with the shared partials substituted."""
    partials = _load("search_templates/partials.json")
    source = "\n".join(_load(f"search_templates/{name}.json")["source"])
    return (
        source.replace("@filters@", "\n      ".join(partials["filters"]))
        .replace("@exclude@", "\n".join(partials["exclude"]))
        .replace("@exact_rescore@", "\n".join(partials["exact_rescore"]))
        .replace("@facet_aggs@", json.dumps(partials["facet_aggs"]))
        .replace("@cosine_script@", COSINE_SCRIPT)
        .replace("@hit_source_with_vector@", json.dumps(HIT_SOURCE_WITH_VECTOR))
        .replace("@hit_source@", json.dumps(HIT_SOURCE))
    )


def search_templates(alias: str) -> dict[str, dict[str, Any]]:
    """``{template_id: stored-script body}`` for ``PUT _scripts/<id>``."""
    return {
        search_template_id(alias, name): {
            "script": {"lang": "mustache", "source": search_template_source(name)}
        }
        for name in SEARCH_TEMPLATES
    }
