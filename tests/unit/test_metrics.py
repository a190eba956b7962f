"""The metrics module without services: job outcomes, embedding batches, queue depth."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import metrics
from pipeline.jobs import queue_depth


def scrape(*extra) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry(*extra)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_jobs_counted_by_outcome_and_failed_products_by_reason():
    before = scrape()
    ok = {"status": "indexed"}
    metrics.observe_job("index", [ok, ok])
    metrics.observe_job("index", [ok, {"status": "failed", "reason": "corrupt"}])
    metrics.observe_job("index", [{"status": "failed", "reason": "corrupt"}])
    after = scrape()
    for outcome, grew in (("done", 1), ("partially_failed", 1), ("failed", 1)):
        name = "vitrine_jobs_total"
        labels = {"task": "index", "outcome": outcome}
        assert sample(after, name, **labels) - sample(before, name, **labels) == grew
    reason = {"reason": "corrupt"}
    assert (
        sample(after, "vitrine_failed_products_total", **reason)
        - sample(before, "vitrine_failed_products_total", **reason)
        == 2
    )


def test_an_image_batch_counts_its_images_and_its_time():
    before = scrape()
    with metrics.embedding("image", 7):
        pass
    with metrics.embedding("text", 3):
        pass
    after = scrape()
    assert (
        sample(after, "vitrine_images_embedded_total")
        - sample(before, "vitrine_images_embedded_total")
        == 7
    )
    for kind in ("image", "text"):
        name = "vitrine_embed_batch_seconds_count"
        assert sample(after, name, kind=kind) - sample(before, name, kind=kind) == 1


class FakeBroker:
    def llen(self, key: str) -> int:
        return {"jobs": 4, "other": 0}[key]

    def hlen(self, key: str) -> int:
        return {"jobs.unacked": 2, "other.unacked": 1}[key]


def test_queue_depth_is_read_at_scrape_time():
    found = scrape(
        metrics.QueueDepth(FakeBroker(), {"jobs": "jobs.unacked", "other": "other.unacked"})
    )
    assert sample(found, "vitrine_queue_depth", queue="jobs") == 4
    assert sample(found, "vitrine_queue_depth", queue="other") == 0
    assert sample(found, "vitrine_queue_unacked", queue="jobs") == 2


def test_a_queues_gauges_read_the_hash_kombu_keeps_its_unacked_messages_in():
    found = scrape(queue_depth(FakeBroker(), "other"))  # the fake answers for "<queue>.unacked"
    assert sample(found, "vitrine_queue_depth", queue="other") == 0
    assert sample(found, "vitrine_queue_unacked", queue="other") == 1
