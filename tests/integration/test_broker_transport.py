"""Vitrine's Redis transport (``pipeline.broker``) against a real Redis: a job that finishes
after its broker connection was lost must not stop the worker."""

import logging
import uuid

import pytest
from kombu import Connection
from redis import Redis

from pipeline.broker import Transport


@pytest.mark.parametrize(("settle", "said"), [("ack", "acknowledged"), ("reject", "rejected")])
def test_a_job_settled_after_its_connection_closed_keeps_the_worker_and_the_job(
    services, settings, settle, said, caplog
):
    """Celery collects a lost connection (its channels close) and reconnects; a job still
    running acknowledges (or rejects) its message on the closed channel afterwards. With Redis
    down at that close, the channel's pool is gone too (``_disconnect_pools``, as kombu's close
    leaves it), and kombu's stock transport then raises ``'NoneType' object has no attribute
    'client'``, which Celery treats as unrecoverable (seen in a CI run of the durability test)."""
    queue = f"{settings.queue}-closed-{uuid.uuid4().hex[:6]}"
    redis = Redis.from_url(settings.redis_url)
    connection = Connection(settings.redis_url, transport=Transport)
    try:
        jobs = connection.SimpleQueue(queue)
        jobs.put({"job": 1})
        message = jobs.get(timeout=5)
        connection.collect()  # as Celery on a lost broker connection
        message.channel._disconnect_pools()  # what a close with Redis down leaves
        with caplog.at_level(logging.WARNING, logger="pipeline.broker"):
            getattr(message, settle)()
        assert f"could not be {said}" in caplog.text
        held = redis.llen(queue) + redis.hexists(message.channel.unacked_key, message.delivery_tag)
        assert held == 1  # Redis still holds the job: it runs again
    finally:
        redis.delete(queue)
        connection.release()
