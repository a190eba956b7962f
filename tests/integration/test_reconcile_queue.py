"""The reconciler against the real Redis broker: a backlog is left to wait, a message Redis lost
is sent again at the next pass. No worker consumes this test's queue."""

from __future__ import annotations

import json
import time

import pytest
from redis import Redis

from pipeline.ingest.reconcile import LOST, reconcile
from pipeline.jobs import SENT_AT_HEADER, create_celery, enqueue, queue_view, unacked_key
from tests.integration.helpers import make_product, unique_prefix

pytestmark = pytest.mark.integration


def test_a_backlog_waits_and_a_message_redis_lost_is_sent_again(settings, es, tmp_path):
    """Three queued jobs, older than the bound for started jobs (1 s here), are not sent again:
    they wait in the queue. The one next in line is then taken from Redis without being
    recorded as held, as a worker's pop is when Redis stops under it; the next pass finds it
    gone and sends it again, under its job id, and still not the other two. A job a worker
    holds unacknowledged is not lost either."""
    current = settings.model_copy(
        update={
            "queue": f"{settings.queue}-backlog",
            "home": tmp_path,  # its own journal: no other reconciler sees these records
            "reconcile_grace_s": 0,
            "reconcile_stale_s": 1,
        }
    )
    app, broker = create_celery(current), Redis.from_url(current.redis_url)
    prefix = unique_prefix()
    try:
        jobs = enqueue(app, [make_product(tmp_path, i, prefix=prefix) for i in range(3)])
        time.sleep(1.5)
        assert reconcile(app, es).resent == {}
        assert broker.llen(current.queue) == 3

        taken = json.loads(broker.rpop(current.queue))
        assert taken["headers"]["id"] == jobs[0] and SENT_AT_HEADER in taken["headers"]
        view = queue_view(app, current.queue)
        assert view.delivered == frozenset() and view.front_sent_at is not None
        report = reconcile(app, es)
        assert report.resent == {LOST: 1}
        queued = [json.loads(m)["headers"]["id"] for m in broker.lrange(current.queue, 0, -1)]
        assert queued == [jobs[0], jobs[2], jobs[1]]  # sent again to the back of the line
        [resent] = [r for r in app.pending_journal.pending() if r.job_id == jobs[0]]
        assert resent.sends == 2 and resent.queue == current.queue
        assert reconcile(app, es).resent == {}  # now in the queue again: it waits

        with app.connection_for_read() as connection:  # a worker takes the next, unacknowledged
            held = connection.SimpleQueue(current.queue).get(timeout=5)
            assert held.headers["id"] == jobs[1]
            assert queue_view(app, current.queue).delivered == {jobs[1]}
            assert reconcile(app, es).resent == {}  # held by a worker: not lost
    finally:
        broker.delete(current.queue, unacked_key(current.queue))
