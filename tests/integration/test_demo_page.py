"""The demo search page in real headless Chromium (Debian's ``chromium``, driven by Playwright)
against the real stack: uvicorn serving ``create_app``, Elasticsearch, and a worker that indexed
the sample catalogue through ``vitrine ingest``'s import path.

The catalogue is the bundled sample (25 drawn products) plus a "limited edition" twin of the red
sneaker: the same drawing, resized and re-encoded. With the tests' random-weight model only
exact or near-identical images are meaningful matches, so the checks are: the text query's
unique words find the twin (BM25 inside hybrid fusion), the query image finds its own product,
and "more like this" on the red sneaker finds its twin first.

Chromium is /usr/bin/chromium (``VITRINE_CHROMIUM`` overrides); ``playwright install`` is never
needed. ``VITRINE_SKIP_BROWSER=1`` skips the test on machines set up without a browser;
``VITRINE_UPDATE_SCREENSHOT=1`` also writes the screenshot used in the docs.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from pipeline.es import mappings
from pipeline.images import ImageLimits
from pipeline.ingest.importer import plan_import, run_import
from pipeline.storage import ImageStore

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "catalogue"
SCREENSHOT = ROOT / "docs" / "screenshot-search-page.png"
CHROMIUM = os.environ.get("VITRINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TWIN = "shoe-red-limited"

if os.environ.get("VITRINE_SKIP_BROWSER") == "1":
    pytest.skip("VITRINE_SKIP_BROWSER=1", allow_module_level=True)


@pytest.fixture(scope="module")
def page_settings(settings):
    """An alias and queue of their own, so the grid shows only the demo catalogue."""
    return settings.model_copy(
        update={"index_alias": f"page-{settings.index_alias}", "queue": f"page-{settings.queue}"}
    )


@pytest.fixture(scope="module")
def demo_catalogue(page_settings, es, tmp_path_factory) -> Path:
    from pipeline.dev.worker_process import worker_process

    directory = tmp_path_factory.mktemp("page-catalogue")
    with (SAMPLES / "catalogue.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["image"] = str(SAMPLES / row["image"])
    red = next(r for r in rows if r["product_id"] == "shoe-red")
    twin_image = directory / "shoe-red-limited.jpg"
    with Image.open(red["image"]) as img:
        img.convert("RGB").resize((300, 300), Image.LANCZOS).save(twin_image, quality=85)
    rows.append(
        {
            **red,
            "product_id": TWIN,
            "title": "Red sneaker, limited edition",
            "price": "99.0",
            "tags": "red|limited",
            "description": "Numbered limited edition run of the red sneaker.",
            "image": str(twin_image),
        }
    )
    path = directory / "catalogue.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    plan = plan_import(
        path,
        store=ImageStore(page_settings.images_dir),
        limits=ImageLimits.from_settings(page_settings),
    )
    assert not plan.rejected and len(plan.products) == 26
    log = tmp_path_factory.mktemp("page-worker") / "worker.log"
    with log.open("w") as out, worker_process(page_settings, output=out) as celery_app:
        result = run_import(celery_app, plan, batch_size=8, timeout_s=300)
    assert len(result.indexed) == 26 and not result.failed, result.failed
    yield path
    alias = page_settings.index_alias
    for index in es.indices.get(index=f"{alias}.*", expand_wildcards="all"):
        es.options(ignore_status=404).indices.delete(index=index)
    es.options(ignore_status=404).indices.delete_index_template(
        name=mappings.product_template_name(alias)
    )
    for script in mappings.search_templates(alias):
        es.options(ignore_status=404).delete_script(id=script)


@pytest.fixture(scope="module")
def server(page_settings, demo_catalogue) -> Iterator[str]:
    """uvicorn serving the real app on a free port, in a thread."""
    import uvicorn

    from pipeline.api.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(page_settings), log_level="warning", lifespan="on")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not uvicorn_server.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (scripts/setup.sh does), "
            "or set VITRINE_SKIP_BROWSER=1"
        )
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def searched(page, action) -> list[str]:
    """Run an action that starts a search; wait for its response and the rendered grid."""
    with page.expect_response(lambda r: r.url.endswith("/v1/search")) as info:
        action()
    assert info.value.ok, info.value.text()
    page.wait_for_selector('#results[data-state="ready"]')
    return page.eval_on_selector_all(
        "#results .card", "cards => cards.map(c => c.dataset.productId)"
    )


def test_search_page_text_image_filters_and_more_like_this(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    # first load: the whole catalogue, with facet counts
    cards = searched(page, lambda: page.goto(server))
    assert len(cards) == 26 and TWIN in cards
    assert page.get_attribute("#results", "data-shape") == "keyword"
    shoes = page.locator('#facets [data-facet="category"] button[data-value="shoes"] .count')
    assert shoes.inner_text() == "6"
    assert page.locator('#facets [data-facet="tags"] button[data-value="sale"]').count() == 1
    assert page.locator("#model-warning").is_visible()  # the tests' model has random weights

    # a text query (hybrid: CLIP text kNN + BM25): only the twin has these words
    cards = searched(
        page, lambda: (page.fill("#query-text", "limited edition"), page.click("#search-button"))
    )
    assert page.get_attribute("#results", "data-shape") == "text"
    assert cards[0] == TWIN
    first = page.locator("#results .card").first
    assert "Red sneaker, limited edition" in first.inner_text()
    assert "99" in first.locator(".price").inner_text()
    assert "score" in first.inner_text()

    # an image query, uploaded through the file input: the query photo's product comes first
    # (the red t-shirt: with random weights every drawing is close to every other, and this
    # one has one of the widest margins to its nearest neighbour)
    page.fill("#query-text", "")
    cards = searched(
        page, lambda: page.set_input_files("#image-input", SAMPLES / "images" / "shirt-red.jpg")
    )
    assert page.get_attribute("#results", "data-shape") == "image"
    assert cards[0] == "shirt-red"
    assert page.locator("#image-preview").is_visible()
    img = page.locator("#results .card img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    src = img.get_attribute("src")
    assert src.startswith("/v1/images/")
    page.screenshot(path=tmp_path / "search-page.png")
    if os.environ.get("VITRINE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "search-page.png", SCREENSHOT)

    # click a result: more like this, the product itself left out, its twin first
    cards = searched(page, lambda: page.click('#results .card[data-product-id="shoe-red"]'))
    assert page.get_attribute("#results", "data-shape") == "more_like_this"
    assert page.locator("#mlt-banner").is_visible()
    assert page.inner_text("#mlt-title") == "Red sneaker"
    assert "shoe-red" not in cards and cards[0] == TWIN

    # filters: back to browsing, then category and in-stock filters from the form
    searched(page, lambda: page.click("#reset-button"))
    cards = searched(page, lambda: page.select_option("#filter-category", "mugs"))
    categories = page.eval_on_selector_all(
        "#results .card", "cs => cs.map(c => c.dataset.category)"
    )
    assert len(cards) == 5 and set(categories) == {"mugs"}
    price_facet = page.locator('#facets [data-facet="price"] button[data-value="0-25"] .count')
    assert price_facet.inner_text() == "3"  # sample mugs cost 12, 17, 22, 27 and 32
    cards = searched(page, lambda: page.check("#filter-in-stock"))
    assert sorted(cards) == ["mug-black", "mug-blue", "mug-red", "mug-yellow"]
    in_stock = page.eval_on_selector_all("#results .card .meta", "ms => ms.map(m => m.textContent)")
    assert not any("out of stock" in text for text in in_stock)

    assert not errors, errors
    page.close()


def panel(page, name: str) -> list[str]:
    return page.eval_on_selector_all(
        f"#{name} .card", "cards => cards.map(c => c.dataset.productId)"
    )


def viewed(page, action) -> list[str]:
    """Open a product (a view): wait for the event, then for the recommendations panel."""
    with (
        page.expect_response(lambda r: r.url.endswith("/v1/events")) as event,
        page.expect_response(lambda r: "/v1/recommendations?" in r.url) as recs,
    ):
        action()
    assert event.value.ok, event.value.text()
    assert recs.value.ok, recs.value.text()
    page.wait_for_selector('#recommended[data-state="ready"]')
    return panel(page, "recommended")


def test_recently_viewed_and_you_may_also_like(server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    searched(page, lambda: page.goto(server))
    assert page.locator("#history").is_hidden()  # nothing viewed yet

    # opening the red sneaker: it is recently viewed, its near-identical twin comes first
    recommended = viewed(page, lambda: page.click('#results .card[data-product-id="shoe-red"]'))
    assert page.locator("#history").is_visible()
    assert panel(page, "recent") == ["shoe-red"]
    assert recommended and recommended[0] == TWIN and "shoe-red" not in recommended

    # opening a recommendation: both are recently viewed (newest first), neither recommended
    recommended = viewed(page, lambda: page.click(f'#recommended .card[data-product-id="{TWIN}"]'))
    assert panel(page, "recent") == [TWIN, "shoe-red"]
    assert recommended and not {TWIN, "shoe-red"} & set(recommended)

    # the history outlives a reload: same shopper id, recommendations fetched again
    with page.expect_response(lambda r: "/v1/recommendations?" in r.url):
        page.reload()
    page.wait_for_selector('#recommended[data-state="ready"]')
    assert panel(page, "recent") == [TWIN, "shoe-red"]
    assert set(panel(page, "recommended")) == set(recommended)
    assert not errors, errors
    page.close()
