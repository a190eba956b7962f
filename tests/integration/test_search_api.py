"""``POST /v1/embed`` and ``POST /v1/search`` through FastAPI against the real Elasticsearch."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.documents import MATCHING_FIELDS
from pipeline.ingest.ingestor import Ingestor
from pipeline.search.fusion import combine_vectors
from tests.integration.helpers import ImageServer, pattern_image, unique_prefix
from tests.integration.search_catalogue import Catalogue, build_catalogue, index_catalogue

HIT_FIELDS = {
    "product_id", "merchant_id", "title", "price", "currency", "category", "tags", "in_stock",
    "image_url", "image_sha256", "score", "document_id",
}  # fmt: skip


@pytest.fixture(scope="module")
def cat(es, settings, encoder, tmp_path_factory) -> Catalogue:
    catalogue = build_catalogue(tmp_path_factory.mktemp("search-api"), unique_prefix())
    index_catalogue(Ingestor(settings, es=es, encoder=encoder), catalogue)
    return catalogue


@pytest.fixture(scope="module")
def client(settings, cat) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def image_server(cat) -> Iterator[ImageServer]:
    server = ImageServer()
    server.images["bag.jpg"] = cat.query_images["bag"].read_bytes()
    server.images["notes.jpg"] = b"plain text, not a picture\n" * 10
    yield server
    server.close()


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    pattern_image(seed).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def isolated(cat: Catalogue, **filters) -> dict:
    return {"tags_all": [cat.prefix, *filters.pop("tags_all", [])], **filters}


# --------------------------------------------------------------------------- /v1/embed


def test_embed_text(client, encoder):
    response = client.post("/v1/embed", json={"text": "red leather handbag"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == encoder.model_id and body["dims"] == 32 and body["kind"] == "text"
    expected = encoder.embed_texts(["red leather handbag"])[0]
    assert np.allclose(body["vector"], expected, atol=1e-6)
    assert np.linalg.norm(body["vector"]) == pytest.approx(1.0, abs=1e-5)


def test_embed_upload_base64_and_url_give_the_image_vector(client, cat, encoder, image_server):
    data = cat.query_images["bag"].read_bytes()
    expected = encoder.embed_images([cat.image("bag")])[0]
    uploaded = client.post("/v1/embed", files={"image": ("q.jpg", data, "image/jpeg")})
    as_base64 = client.post("/v1/embed", json={"image_base64": base64.b64encode(data).decode()})
    data_url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    as_data_url = client.post("/v1/embed", json={"image_base64": data_url})
    by_url = client.post("/v1/embed", json={"image_url": f"{image_server.base}/img/bag.jpg"})
    for response in (uploaded, as_base64, as_data_url, by_url):
        assert response.status_code == 200, response.text
        assert response.json()["kind"] == "image"
        assert np.allclose(response.json()["vector"], expected, atol=1e-6)


def test_embed_image_and_text_is_the_weighted_mix(client, cat, encoder):
    data = cat.query_images["bag"].read_bytes()
    response = client.post(
        "/v1/embed",
        files={"image": ("q.jpg", data, "image/jpeg")},
        data={"text": "in red", "image_weight": "0.7"},
    )
    assert response.status_code == 200, response.text
    image = encoder.embed_images([cat.image("bag")])[0]
    text = encoder.embed_texts(["in red"])[0]
    assert response.json()["kind"] == "image_text"
    assert np.allclose(response.json()["vector"], combine_vectors(image, text, 0.7), atol=1e-6)


@pytest.mark.parametrize(
    ("request_kwargs", "status", "reason"),
    [
        ({"files": {"image": ("q.jpg", jpeg(1)[:300], "image/jpeg")}}, 422, "corrupt"),
        ({"files": {"image": ("q.jpg", b"just words " * 50, "image/jpeg")}}, 422, "not_an_image"),
        ({"files": {"image": ("q.jpg", b"", "image/jpeg")}}, 422, "empty"),
        ({"json": {"image_base64": "!!not base64!!"}}, 400, "invalid_base64"),
        ({"json": {"image_url": "file:///etc/passwd"}}, 400, "invalid_source"),
        ({"json": {"image_url": "/etc/hosts"}}, 400, "invalid_source"),
        ({"json": {"image_url": "http://127.0.0.1:9/nothing.jpg"}}, 422, "fetch_failed"),
        ({"json": {}}, 400, "invalid_query"),
        ({"content": b"text=x", "headers": {"content-type": "text/plain"}}, 415, None),
    ],
)
def test_embed_bad_input_gets_a_clear_4xx(client, request_kwargs, status, reason):
    response = client.post("/v1/embed", **request_kwargs)
    assert response.status_code == status, response.text
    if reason:
        assert response.json()["detail"]["reason"] == reason
        assert response.json()["detail"]["message"]


def test_embed_image_url_errors(client, image_server):
    missing = client.post("/v1/embed", json={"image_url": f"{image_server.base}/img/none.jpg"})
    assert missing.status_code == 422 and missing.json()["detail"]["reason"] == "not_found"
    notes = client.post("/v1/embed", json={"image_url": f"{image_server.base}/img/notes.jpg"})
    assert notes.status_code == 422 and notes.json()["detail"]["reason"] == "not_an_image"


def test_embed_too_large(settings, cat):
    small = settings.model_copy(update={"image_max_bytes": 2000})
    with TestClient(create_app(small)) as client:
        data = pattern_image(5, 300).tobytes()[:5000]
        response = client.post("/v1/embed", files={"image": ("q.png", data, "image/png")})
        assert response.status_code == 413 and response.json()["detail"]["reason"] == "too_large"
        as_b64 = client.post("/v1/embed", json={"image_base64": base64.b64encode(data).decode()})
        assert as_b64.status_code == 413


def test_embed_validation_errors(client):
    unknown = client.post("/v1/embed", json={"text": "x", "colour": "red"})
    assert unknown.status_code == 422
    weight = client.post("/v1/embed", json={"text": "x", "image_weight": 3})
    assert weight.status_code == 422
    broken = client.post("/v1/embed", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 422


# --------------------------------------------------------------------------- /v1/search


def test_search_by_uploaded_image(client, cat, es, settings):
    data = cat.query_images["boot_near"].read_bytes()
    request = {"filters": isolated(cat), "k": 5, "explain": True}
    response = client.post(
        "/v1/search",
        files={"image": ("q.jpg", data, "image/jpeg")},
        data={"request": json.dumps(request)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] == "image" and body["k"] == 5 and body["from"] == 0
    assert body["hits"][0]["product_id"] == f"{cat.prefix}-boot"
    assert set(body["hits"][0]) >= HIT_FIELDS
    # what near-duplicate matching reads stays out of hits (the fingerprint alone is 9.3 KB)
    stored = es.get(index=settings.index_alias, id=body["hits"][0]["document_id"])["_source"]
    assert set(MATCHING_FIELDS) <= set(stored)
    assert not set(MATCHING_FIELDS) & set(body["hits"][0])
    assert body["hits"][0]["explanation"]["lists"]["image"]["rank"] == 1
    # a small catalogue: the query planner searches it exactly, and says why
    assert body["requests"][0]["template_id"].endswith("-exact")
    assert body["plan"]["method"] == "exact" and body["plan"]["estimated_docs"] > 0


def test_search_by_image_url_base64_and_vector_agree(client, cat, image_server):
    data = cat.query_images["bag"].read_bytes()
    vector = client.post("/v1/embed", json={"image_url": f"{image_server.base}/img/bag.jpg"}).json()
    common = {"filters": isolated(cat), "k": 4}
    bodies = [
        {"image_url": f"{image_server.base}/img/bag.jpg", **common},
        {"image_base64": base64.b64encode(data).decode(), **common},
        {"vector": vector["vector"], "model_id": vector["model_id"], **common},
    ]
    results = [client.post("/v1/search", json=b) for b in bodies]
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    ids = [[h["document_id"] for h in r.json()["hits"]] for r in results]
    assert ids[0] == ids[1] == ids[2]
    assert results[0].json()["hits"][0]["product_id"] == f"{cat.prefix}-bag"


def test_search_by_the_opposite_of_indexed_vectors(client, cat, es, settings):
    """Exact search scores (1 + cos) / 2, which rounding makes slightly negative for some
    vectors' opposites (cos -1 computed as -1.0000001); script_score refuses a negative score,
    so Vitrine clamps it at 0. Every catalogue image's opposite is searched: rounding decides
    which of them trip it."""
    query = {"term": {"tags": cat.prefix}}
    hits = es.search(index=settings.index_alias, query=query, size=100)["hits"]["hits"]
    assert len(hits) >= 5
    for hit in hits:
        opposite = [-x for x in hit["_source"]["image_vector"]]
        request = {"vector": opposite, "model_id": hit["_source"]["model_id"], "k": 100}
        response = client.post("/v1/search", json={**request, "filters": isolated(cat)})
        assert response.status_code == 200, response.text
        assert min(h["score"] for h in response.json()["hits"]) >= 0


def test_search_text_hybrid_with_facets_and_paging(client, cat):
    request = {"text": "crimson", "filters": isolated(cat), "facets": True, "explain": True}
    body = client.post("/v1/search", json=request).json()
    assert body["shape"] == "text" and body["fusion"] == "rrf"
    assert body["hits"][0]["product_id"] == f"{cat.prefix}-crimson_bag"
    assert set(body["hits"][0]["explanation"]["lists"]) == {"text", "keyword"}
    assert {b["value"]: b["count"] for b in body["facets"]["category"]}["bags"] == 2
    page = client.post("/v1/search", json={**request, "from": 2, "size": 3}).json()
    assert [h["document_id"] for h in page["hits"]] == [h["document_id"] for h in body["hits"][2:5]]


def test_search_keyword_search_after(client, cat):
    request = {"filters": isolated(cat, in_stock=True), "sort": "price_asc", "size": 4}
    first = client.post("/v1/search", json=request).json()
    assert first["shape"] == "keyword" and first["total"] == 7 and first["next_search_after"]
    second = client.post(
        "/v1/search", json={**request, "search_after": first["next_search_after"]}
    ).json()
    prices = [h["price"] for h in first["hits"] + second["hits"] if h["price"] is not None]
    assert prices == sorted(prices) and len(first["hits"] + second["hits"]) == 7
    assert second["next_search_after"] is None


def test_search_more_like_this(client, cat):
    bag = cat.products["bag"]
    body = client.post(
        "/v1/search",
        json={
            "product_id": bag.product_id,
            "merchant_id": bag.merchant_id,
            "filters": isolated(cat),
        },
    ).json()
    assert body["shape"] == "more_like_this"
    assert body["hits"][0]["product_id"] == f"{cat.prefix}-crimson_bag"
    assert all(h["product_id"] != bag.product_id for h in body["hits"])
    missing = client.post("/v1/search", json={"product_id": "nope", "merchant_id": bag.merchant_id})
    assert missing.status_code == 404 and missing.json()["detail"]["reason"] == "product_not_found"


def test_search_filters_never_leak(client, cat):
    request = {"image_url": None, "text": "canvas", "filters": isolated(cat, in_stock=False)}
    body = client.post("/v1/search", json=request).json()
    assert [h["product_id"] for h in body["hits"]] == [f"{cat.prefix}-boot"]


def test_search_vector_of_wrong_dimension_or_model(client, cat, encoder):
    vector = [float(x) for x in encoder.embed_texts(["x"])[0]]
    short = client.post("/v1/search", json={"vector": vector[:16], "model_id": encoder.model_id})
    assert short.status_code == 400
    assert short.json()["detail"]["reason"] == "dimension_mismatch"
    assert "16 dimensions" in short.json()["detail"]["message"]
    other = client.post("/v1/search", json={"vector": vector, "model_id": "open_clip:x:y:32"})
    assert other.status_code == 400 and other.json()["detail"]["reason"] == "model_mismatch"
    bare = client.post("/v1/search", json={"vector": vector})
    assert bare.status_code == 400 and bare.json()["detail"]["reason"] == "invalid_query"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"k": 0}, 422),
        ({"k": 500}, 400),
        ({"text": "x", "search_after": [1]}, 400),
        ({"fusion": "max"}, 422),
        ({"filters": {"colour": "red"}}, 422),
        ({"image_url": "https://a.example/x.jpg", "product_id": "p", "merchant_id": "m"}, 400),
        ({"product_id": "p"}, 400),
    ],
)
def test_search_bad_parameters(client, body, status):
    response = client.post("/v1/search", json=body)
    assert response.status_code == status, response.text


@pytest.mark.parametrize(("price", "status"), [("1.7e308", 200), ("1e400", 422), ("Infinity", 422)])
def test_search_with_price_bounds_off_the_planners_grid(client, price, status):
    """The planner widens price bounds to count them: a bound as large as a float gets is
    searched as asked; JSON's out-of-range numbers never reach it."""
    body = f'{{"text": "red", "text_mode": "vector", "filters": {{"max_price": {price}}}}}'
    response = client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text


def test_search_bad_query_images(client):
    corrupt = client.post(
        "/v1/search",
        files={"image": ("q.jpg", jpeg(2)[:200], "image/jpeg")},
        data={"request": "{}"},
    )
    assert corrupt.status_code == 422 and corrupt.json()["detail"]["reason"] == "corrupt"
    bad_json = client.post(
        "/v1/search", files={"image": ("q.jpg", jpeg(2), "image/jpeg")}, data={"request": "{"}
    )
    assert bad_json.status_code == 422


def test_openapi_documents_both_endpoints(client):
    spec = client.get("/openapi.json").json()
    for path, model in (("/v1/embed", "EmbedResponse"), ("/v1/search", "SearchResponse")):
        operation = spec["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= set(content)
        assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
        assert "examples" in content["application/json"]
        assert "$ref" not in json.dumps(content)  # inline, so Swagger UI renders it
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.endswith(model)
        assert {"400", "413", "422"} <= set(operation["responses"])
    search = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]["application/json"]
    properties = search["schema"]["properties"]
    assert {"text", "image_url", "product_id", "filters", "from", "fusion"} <= set(properties)
    assert "tags_all" in properties["filters"]["properties"]
    assert set(search["examples"]) >= {"text", "image_text", "more_like_this", "keyword"}
    assert client.get("/docs").status_code == 200
