"""Search parameters are declared once (``SearchOptions`` and ``Filters`` in the search domain):
the HTTP request extends them, turns into a ``SearchQuery`` without copying fields one by one,
and the ``vitrine search`` command offers each of them (or it is listed as HTTP-only here)."""

import pytest
import typer.main

from pipeline.api.models import SearchRequest
from pipeline.cli.app import app
from pipeline.search.plan import QueryError, SearchOptions, SearchQuery
from pipeline.search.query import Filters, ProductRef

# Parameters only an HTTP client gives, and why.
HTTP_ONLY = {
    "image_base64": "the CLI reads the query image from a path or URL (--image)",
    "vector": "query vectors come from POST /v1/embed, a step of HTTP clients",
    "model_id": "the model of vector",
}
# CLI options whose name is not the parameter's with dashes.
CLI_NAMES = {
    "image_url": "--image",
    "merchant_id": "--product-merchant",
    "filters.tags_all": "--tag",
    "filters.tags_any": "--any-tag",
    "filters.merchant_id": "--merchant",
    "filters.exclude_quality_flags": "--exclude-quality-flag",
    "filters.auto_tags_all": "--auto-tag",
}


def search_parameters() -> list[str]:
    """Every parameter of ``POST /v1/search`` by its HTTP name, filters as ``filters.<name>``."""
    names = [f.alias or n for n, f in SearchRequest.model_fields.items() if n != "filters"]
    return names + [f"filters.{name}" for name in Filters.model_fields]


def cli_options() -> set[str]:
    command = typer.main.get_command(app).commands["search"]  # type: ignore[attr-defined]
    return {option for param in command.params for option in param.opts}


def test_every_search_parameter_has_a_cli_option():
    options = cli_options()
    missing = []
    for name in search_parameters():
        option = CLI_NAMES.get(name, "--" + name.rpartition(".")[2].replace("_", "-"))
        if name not in HTTP_ONLY and option not in options:
            missing.append(f"{name} (expected {option})")
    assert not missing, "search parameters without a CLI option: " + ", ".join(missing)


def test_http_only_and_renamed_parameters_exist():
    assert set(HTTP_ONLY) | set(CLI_NAMES) <= set(search_parameters())


def test_the_http_request_extends_the_search_options():
    assert issubclass(SearchRequest, SearchOptions) and issubclass(SearchQuery, SearchOptions)
    assert SearchRequest.model_fields["filters"].annotation is Filters


def test_the_request_becomes_a_query_with_every_option():
    body = SearchRequest.model_validate(
        {
            "text": "red",
            "product_id": "p",
            "merchant_id": "m",
            "filters": {"tags_all": ["a"], "in_stock": False, "exclude_quality_flags": ["x"]},
            "k": 7,
            "num_candidates": 70,
            "from": 2,
            "size": 3,
            "text_mode": "vector",
            "combine": "lists",
            "fusion": "linear",
            "image_weight": 0.3,
            "keyword_weight": 0.2,
            "rrf_k": 5,
            "explain": True,
            "facets": True,
        }
    )
    query = body.to_query(None)
    assert query.options() == body.options()
    assert query.product == ProductRef("m", "p") and query.shape == "more_like_this"
    vector = SearchRequest(vector=[1.0], model_id="mod").to_query(None)
    assert (vector.vector, vector.vector_model_id) == ([1.0], "mod")


@pytest.mark.parametrize("fields", [{"product_id": "p"}, {"merchant_id": "m"}])
def test_product_id_and_merchant_id_go_together(fields):
    with pytest.raises(QueryError, match="go together"):
        SearchRequest.model_validate(fields).to_query(None)
