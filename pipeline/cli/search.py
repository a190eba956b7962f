"""``vitrine search``: every query shape from the command line, as a table or as JSON (the same
JSON as ``POST /v1/search``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from pipeline.cli.common import fail, settings
from pipeline.encoders import EncoderError, EncoderOutputInvalid
from pipeline.es.client import make_client
from pipeline.fetch import FetchPolicy
from pipeline.images import ImageError, ImageLimits, load_image
from pipeline.search.plan import QueryError, SearchQuery
from pipeline.search.query import ProductRef
from pipeline.search.searcher import Searcher


def _format_price(hit: dict[str, Any]) -> str:
    return (
        f"{hit['price']:.2f} {hit.get('currency') or ''}".strip()
        if hit.get("price") is not None
        else "-"
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_result(result: dict[str, Any]) -> None:
    """A readable table of hits (and explanations and facets when present)."""
    header = f"{result['shape']} search"
    if result.get("fusion"):
        header += f", {result['fusion']} fusion"
    typer.echo(f"{header}: {result['total']} product(s), showing {len(result['hits'])}")
    row = "{:>4}  {:>9}  {:<28}  {:<30}  {:<10}  {:>11}  {:<5}  {}"
    typer.echo(
        row.format("#", "score", "merchant/product", "title", "category", "price", "stock", "tags")
    )
    for rank, hit in enumerate(result["hits"], start=result["from"] + 1):
        typer.echo(
            row.format(
                rank,
                f"{hit['score']:.4f}",
                f"{hit['merchant_id']}/{hit['product_id']}"[:28],
                (hit.get("title") or "")[:30],
                (hit.get("category") or "-")[:10],
                _format_price(hit),
                "yes" if hit.get("in_stock") else "no",
                ",".join(hit.get("tags") or []),
            )
        )
        explanation = hit.get("explanation")
        if explanation:
            parts = [
                f"{name} #{c['rank']} (score {_number(c['score'])}, +{c['contribution']:.4f})"
                for name, c in explanation["lists"].items()
            ]
            typer.echo(f"{'':>17}{' + '.join(parts)}")
    for name, buckets in (result.get("facets") or {}).items():
        values = ", ".join(f"{b['value']} ({b['count']})" for b in buckets if b["count"])
        typer.echo(f"facet {name}: {values or '-'}")
    plan = result.get("plan")
    if plan:
        typer.echo(
            f"plan: {plan['method']} ({plan['reason']}; pool {plan['pool']}"
            + (f", num_candidates {plan['num_candidates']}" if plan["num_candidates"] else "")
            + (", widened" if plan["widened"] else "")
            + ")"
        )
    if result.get("next_search_after"):
        typer.echo(f"next page: --search-after '{json.dumps(result['next_search_after'])}'")


def search(
    image: Annotated[str | None, typer.Option(help="Query image: a path or http(s) URL.")] = None,
    text: Annotated[str | None, typer.Option(help="Query text.")] = None,
    product_id: Annotated[str | None, typer.Option(help="More like this product.")] = None,
    product_merchant: Annotated[
        str | None, typer.Option(help="Merchant of --product-id (default: --merchant).")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Must have this tag (repeatable).")] = None,
    any_tag: Annotated[
        list[str] | None, typer.Option(help="Must have one of these tags (repeatable).")
    ] = None,
    category: Annotated[str | None, typer.Option(help="Category.")] = None,
    auto_tag: Annotated[
        list[str] | None, typer.Option(help="Has this zero-shot tag, e.g. colour:red (repeatable).")
    ] = None,
    auto_category: Annotated[str | None, typer.Option(help="Zero-shot category.")] = None,
    duplicate_group: Annotated[
        str | None, typer.Option(help="Only this near-duplicate group (the same item).")
    ] = None,
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's products.")] = None,
    min_price: Annotated[float | None, typer.Option(help="Lowest price.")] = None,
    max_price: Annotated[float | None, typer.Option(help="Highest price.")] = None,
    currency: Annotated[str | None, typer.Option(help="Currency (ISO 4217).")] = None,
    in_stock: Annotated[
        bool | None, typer.Option("--in-stock/--out-of-stock", help="Stock filter.")
    ] = None,
    exclude_quality_flag: Annotated[
        list[str] | None,
        typer.Option(help="Leave out images with this flag, e.g. low_resolution (repeatable)."),
    ] = None,
    k: Annotated[
        int | None, typer.Option("-k", "--k", help="Products ranked (default 20).")
    ] = None,
    num_candidates: Annotated[int | None, typer.Option(help="HNSW candidates.")] = None,
    from_: Annotated[int, typer.Option("--from", help="Page offset.")] = 0,
    size: Annotated[int | None, typer.Option(help="Page size (default k).")] = None,
    text_mode: Annotated[str, typer.Option(help="hybrid, vector or keyword.")] = "hybrid",
    combine: Annotated[str, typer.Option(help="Image + text: embedding or lists.")] = "embedding",
    fusion: Annotated[str, typer.Option(help="rrf or linear.")] = "rrf",
    image_weight: Annotated[float, typer.Option(help="Image vs text, 0..1.")] = 0.5,
    keyword_weight: Annotated[float, typer.Option(help="Weight of the BM25 list.")] = 1.0,
    rrf_k: Annotated[int | None, typer.Option(help="RRF rank constant (default 60).")] = None,
    sort: Annotated[
        str, typer.Option(help="Keyword search: relevance, price_asc, ...")
    ] = "relevance",
    search_after: Annotated[
        str | None, typer.Option(help="Keyword search: next page token (JSON array).")
    ] = None,
    explain: Annotated[bool, typer.Option(help="Show what each list contributed.")] = False,
    facets: Annotated[bool, typer.Option(help="Show facet counts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Search products by image, text, both, a product, or keywords and tags."""
    current = settings()
    product = None
    if product_id:
        owner = product_merchant or merchant
        if not owner:
            fail("--product-id needs --product-merchant (or --merchant)")
        product = ProductRef(str(owner), product_id)
    query_image = None
    if image:
        try:
            query_image = load_image(
                image,
                ImageLimits.from_settings(current),
                policy=FetchPolicy.from_settings(current),
            ).image
        except ImageError as exc:
            fail(f"query image: {exc.reason}: {exc.message}")
    try:
        query = SearchQuery.model_validate(
            {
                "text": text,
                "image": query_image,
                "product": product,
                "filters": {
                    "tags_all": tag or [],
                    "tags_any": any_tag or [],
                    "category": category,
                    "merchant_id": merchant,
                    "min_price": min_price,
                    "max_price": max_price,
                    "currency": currency,
                    "in_stock": in_stock,
                    "exclude_quality_flags": exclude_quality_flag or [],
                    "auto_tags_all": auto_tag or [],
                    "auto_category": auto_category,
                    "duplicate_group": duplicate_group,
                },
                "k": k,
                "num_candidates": num_candidates,
                "from": from_,
                "size": size,
                "search_after": json.loads(search_after) if search_after else None,
                "sort": sort,
                "text_mode": text_mode,
                "combine": combine,
                "image_weight": image_weight,
                "keyword_weight": keyword_weight,
                "fusion": fusion,
                "rrf_k": rrf_k,
                "explain": explain,
                "facets": facets,
            }
        )
    except json.JSONDecodeError as exc:
        fail(f"invalid_query: --search-after is not JSON: {exc}")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid_query: {problems}")
    es = make_client(current)
    try:
        result = Searcher(current, es).search(query).to_dict()
    except QueryError as exc:
        fail(f"{exc.reason}: {exc.message}")
    except EncoderOutputInvalid as exc:
        fail(f"{exc.reason}: {exc}")
    except EncoderError as exc:
        fail(f"cannot load the model: {exc}")
    finally:
        es.close()
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        print_result(result)
