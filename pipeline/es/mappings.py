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


def product_index_name(alias: str, model_id: str, generation: int = 1) -> str:
    return f"{alias}-{model_slug(model_id)}-{generation:06d}"


def product_template_name(alias: str) -> str:
    return f"{alias}-products"


def products_index_template(alias: str) -> dict[str, Any]:
    """Index template for every concrete product index behind ``alias``."""
    body = es_mapping_file("products_index_template.json")
    body["index_patterns"] = [f"{alias}-*"]
    body["_meta"] = {"managed_by": "vitrine", "alias": alias}
    return body


def image_vector_mapping(dims: int) -> dict[str, Any]:
    field = es_mapping_file("image_vector_field.json")
    field["dims"] = dims
    return field


def product_index_body(
    alias: str, model_id: str, dims: int, extra_fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Body for creating a concrete product index: the model's vector field, the fields plugin
    processors declare (``extra_fields``) and the write alias.

    Everything else comes from the index template; ``_meta.model_id`` records which model's
    vectors the index holds, so a different model can never write into it unnoticed.
    """
    return {
        "mappings": {
            "_meta": {"model_id": model_id, "dims": dims},
            "properties": {**(extra_fields or {}), "image_vector": image_vector_mapping(dims)},
        },
        "aliases": {alias: {"is_write_index": True}},
    }


def errors_index_template(errors_index: str) -> dict[str, Any]:
    body = es_mapping_file("ingest_errors_index_template.json")
    body["index_patterns"] = [errors_index]
    return body


def index_actions(index: str, documents: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[dict]:
    """Bulk ``index`` actions (create or overwrite by id) for ``(_id, _source)`` pairs."""
    for doc_id, source in documents:
        yield {"_op_type": "index", "_index": index, "_id": doc_id, "_source": source}


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
SEARCH_TEMPLATES = ("knn", "more-like-this", "exact", "product-vector", "keyword")


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
    )


def search_templates(alias: str) -> dict[str, dict[str, Any]]:
    """``{template_id: stored-script body}`` for ``PUT _scripts/<id>``."""
    return {
        search_template_id(alias, name): {
            "script": {"lang": "mustache", "source": search_template_source(name)}
        }
        for name in SEARCH_TEMPLATES
    }
