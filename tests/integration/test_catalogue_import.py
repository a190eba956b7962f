"""`vitrine ingest` against the real stack: a catalogue mixing good rows, invalid rows and broken
images; every good row indexed exactly once, every bad row in the reject report with its reason;
re-runs idempotent; changed-only mode skips what is already indexed."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app as cli
from pipeline.jobs import wait_for_jobs
from pipeline.storage import ImageStore
from tests.integration.helpers import ImageServer, pattern_image, unique_prefix, write_image

COLUMNS = ["product_id", "merchant_id", "title", "price", "in_stock", "tags", "image"]


@pytest.fixture
def image_server():
    server = ImageServer()
    yield server
    server.close()


def run_ingest(settings, *args: str):
    result = CliRunner().invoke(cli, ["ingest", *args], env=settings.to_env())
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def indexed(es, settings, prefix: str) -> dict[tuple[str, str], list[dict]]:
    """Documents of this test's products, by (merchant, product)."""
    es.indices.refresh(index=settings.index_alias)
    hits = es.search(
        index=settings.index_alias,
        query={"prefix": {"product_id": prefix}},
        size=100,
        source_excludes=["image_vector"],
    )["hits"]["hits"]
    docs: dict[tuple[str, str], list[dict]] = {}
    for hit in hits:
        key = (hit["_source"]["merchant_id"], hit["_source"]["product_id"])
        docs.setdefault(key, []).append(hit)
    return docs


def read_report(path: Path) -> dict[int, dict[str, str]]:
    with path.open(newline="") as fh:
        return {int(row["row"]): row for row in csv.DictReader(fh)}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def mixed_catalogue(tmp_path, image_server):
    """A catalogue of 12 rows: 4 good (relative path, absolute path, URL, two images), 4 that
    fail validation, 1 whose image file is missing, 3 whose images only the worker can tell
    are broken."""
    prefix = unique_prefix()
    (tmp_path / "images").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rel = write_image(tmp_path / "images", 700).relative_to(tmp_path)
    absolute = write_image(elsewhere, 701)
    url_bytes_path = write_image(elsewhere, 702, fmt="PNG")
    image_server.images["u702.png"] = url_bytes_path.read_bytes()
    corrupt = tmp_path / "images" / "corrupt.jpg"
    corrupt.write_bytes(absolute.read_bytes()[:400])
    text = tmp_path / "images" / "readme.jpg"
    text.write_text("not a photo\n" * 50)

    def row(n, merchant="shop-a", **fields):
        base = {
            "product_id": f"{prefix}-{n}",
            "merchant_id": merchant,
            "title": f"Item {n}",
            "price": "10.5",
            "in_stock": "true",
            "tags": "x|y",
            "image": str(rel),
        }
        return {**base, **fields}

    rows = [
        row(1),  # 1 good: relative path
        row(2, "shop-b", image=str(absolute)),  # 2 good: absolute path, other merchant
        row(3, image=f"{image_server.base}/img/u702.png"),  # 3 good: URL
        row(4, title=""),  # 4 validation: title
        row(5, price="cheap"),  # 5 validation: price type
        row(1, title="Again"),  # 6 validation: duplicate id
        row(7, image="images/does-not-exist.jpg"),  # 7 image file missing
        row(8, image=str(corrupt)),  # 8 worker: corrupt
        row(9, image="images/readme.jpg"),  # 9 worker: not an image
        row(10, image=f"{image_server.base}/img/missing.png"),  # 10 worker: HTTP 404
        row(11, in_stock="maybe"),  # 11 validation: boolean
        row(12, "shop-b", image=f"{rel}|{absolute}"),  # 12 good: two images
    ]
    path = write_csv(tmp_path / "catalogue.csv", rows)
    expected_rejects = {
        4: ("validation", "title"),
        5: ("validation", "price"),
        6: ("validation", "duplicate product_id"),
        7: ("image", "not_found"),
        8: ("indexing", "corrupt"),
        9: ("indexing", "not_an_image"),
        10: ("indexing", "not_found"),
        11: ("validation", "in_stock"),
    }
    good = {
        ("shop-a", f"{prefix}-1"): 1,
        ("shop-b", f"{prefix}-2"): 1,
        ("shop-a", f"{prefix}-3"): 1,
        ("shop-b", f"{prefix}-12"): 2,
    }
    return path, prefix, rows, expected_rejects, good


def test_mixed_catalogue_good_rows_indexed_once_bad_rows_reported(
    worker, es, settings, mixed_catalogue, tmp_path
):
    path, prefix, rows, expected_rejects, good = mixed_catalogue
    report_path = tmp_path / "report.csv"
    result = run_ingest(
        settings, str(path), "--batch-size", "2", "--reject-report", str(report_path)
    )
    assert result.exit_code == 2, result.output
    assert "12 rows, 7 to index, 5 rejected, 0 unchanged" in result.output
    assert "indexed 4, failed 3, still running 0" in result.output

    report = read_report(report_path)
    assert set(report) == set(expected_rejects)
    for row_number, (stage, reason) in expected_rejects.items():
        entry = report[row_number]
        assert entry["stage"] == stage, entry
        assert entry["reason"].startswith(reason), entry
        assert entry["product_id"] == rows[row_number - 1]["product_id"]
    assert "rejected     1  indexing/corrupt" in result.output
    assert "rejected     1  validation/duplicate product_id" in result.output

    docs = indexed(es, settings, prefix)
    assert {key: len(hits) for key, hits in docs.items()} == good
    # local images were copied into the content store, where the API serves them from
    store = ImageStore(settings.images_dir)
    for hits in docs.values():
        for hit in hits:
            if "://" not in hit["_source"]["image_url"]:
                assert store.get(hit["_source"]["image_sha256"]) is not None

    # the same import again: same documents, nothing duplicated
    ids_before = {h["_id"] for hits in docs.values() for h in hits}
    again = run_ingest(settings, str(path), "--reject-report", str(report_path))
    assert again.exit_code == 2
    docs_again = indexed(es, settings, prefix)
    assert {h["_id"] for hits in docs_again.values() for h in hits} == ids_before
    assert set(read_report(report_path)) == set(expected_rejects)


def test_changed_only_skips_unchanged_rows(worker, es, settings, tmp_path):
    prefix = unique_prefix()
    (tmp_path / "img").mkdir()
    rows = [
        {
            "product_id": f"{prefix}-{i}",
            "merchant_id": "shop-a",
            "title": f"Item {i}",
            "price": str(10 + i),
            "in_stock": "true",
            "tags": "",
            "image": str(write_image(tmp_path / "img", 800 + i).relative_to(tmp_path)),
        }
        for i in range(3)
    ]
    path = write_csv(tmp_path / "catalogue.csv", rows)
    first = run_ingest(settings, str(path), "--changed-only")
    assert first.exit_code == 0, first.output
    assert "3 to index, 0 rejected, 0 unchanged" in first.output
    assert (tmp_path / "catalogue.rejects.csv").read_text().strip() == (
        "row,merchant_id,product_id,stage,reason"
    )

    unchanged = run_ingest(settings, str(path), "--changed-only")
    assert unchanged.exit_code == 0
    assert "0 to index, 0 rejected, 3 unchanged" in unchanged.output

    rows[1]["price"] = "99"  # metadata change
    pattern_image(850, 96).save(tmp_path / rows[2]["image"], format="JPEG")  # same path, new bytes
    write_csv(path, rows)
    changed = run_ingest(settings, str(path), "--changed-only")
    assert changed.exit_code == 0
    assert "2 to index, 0 rejected, 1 unchanged" in changed.output
    docs = indexed(es, settings, prefix)
    assert docs[("shop-a", f"{prefix}-1")][0]["_source"]["price"] == 99.0
    [doc2] = docs[("shop-a", f"{prefix}-2")]
    new_sha = hashlib.sha256((tmp_path / rows[2]["image"]).read_bytes()).hexdigest()
    assert doc2["_source"]["image_sha256"] == new_sha
    assert all(len(hits) == 1 for hits in docs.values())


def test_no_wait_prints_job_ids_and_jsonl_is_accepted(worker, es, settings, tmp_path):
    prefix = unique_prefix()
    lines = [
        {
            "product_id": f"{prefix}-{i}",
            "merchant_id": "shop-c",
            "title": f"J {i}",
            "tags": ["a", "b"],
            "price": 5,
            "images": [str(write_image(tmp_path, 900 + i))],
        }
        for i in range(3)
    ]
    path = tmp_path / "catalogue.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_ingest(settings, str(path), "--no-wait", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "enqueued 3 products in 2 jobs" in result.output
    job_ids = [
        line for line in result.output.splitlines() if len(line) == 36 and line.count("-") == 4
    ]
    assert len(job_ids) == 2
    statuses = wait_for_jobs(worker, job_ids, timeout_s=120)
    assert {s.state for s in statuses.values()} == {"done"}
    docs = indexed(es, settings, prefix)
    assert len(docs) == 3 and all(h[0]["_source"]["tags"] == ["a", "b"] for h in docs.values())


def test_unreadable_catalogue_exits_1(settings, tmp_path):
    bad = tmp_path / "catalogue.csv"
    bad.write_text("product_id,title\n1,x\n")
    result = run_ingest(settings, str(bad))
    assert result.exit_code == 1
    assert "missing column" in result.output


def test_an_import_out_of_time_reports_its_jobs_still_running(es, settings, tmp_path):
    """No worker consumes this queue: the import waits ``--timeout``, then says how many
    products are still running (read in one go) and exits 2; the jobs stay queued."""
    prefix = unique_prefix()
    (tmp_path / "images").mkdir()
    image = write_image(tmp_path / "images", 710).relative_to(tmp_path)
    rows = [
        {"product_id": f"{prefix}-{n}", "merchant_id": "shop-a", "title": f"Item {n}",
         "price": "1", "in_stock": "true", "tags": "x", "image": str(image)}
        for n in range(5)
    ]  # fmt: skip
    path = write_csv(tmp_path / "catalogue.csv", rows)
    unconsumed = settings.model_copy(  # its own journal: no reconciler sends these anywhere
        update={"queue": f"{prefix}-nobody", "journal_dir": tmp_path / "journal"}
    )
    result = run_ingest(unconsumed, str(path), "--batch-size", "2", "--timeout", "1")
    assert result.exit_code == 2, result.output
    assert "indexed 0, failed 0, still running 5" in result.output
