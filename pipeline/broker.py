"""The Redis broker transport: kombu's, with one fix that keeps a worker alive when Redis goes
away while it holds unacknowledged jobs.

On a lost broker connection Celery first ``collect()``s the connection, which closes its
transport, then ``close()``s it, which closes the default channel a second time. That second
close requeues the jobs the worker holds (jobs running, or waiting out a retry countdown), and
kombu 5.7 builds a Redis client for it from the closed transport: ``AttributeError: 'NoneType'
object has no attribute 'hostname'``, which Celery treats as unrecoverable, so the worker exits.

Here that requeue is skipped instead. Nothing is lost by skipping it: Redis is unreachable at
that moment anyway, and every held job is still in the queue's unacked set in Redis, from
which any worker of the queue requeues it once it is ``visibility_timeout`` old (see
``pipeline.jobs``); a Redis that lost its data is covered by the pending journal.
"""

from __future__ import annotations

import logging
from typing import cast

from kombu.transport import redis

log = logging.getLogger(__name__)


class _QoS(redis.QoS):
    def restore_unacked(self, client: object = None) -> None:
        if client is None and self.channel.connection.client is None:
            delivered = cast("dict[str, object]", self._delivered)  # kombu types it None
            held = len(delivered)
            delivered.clear()
            log.warning(
                "broker connection closed before %d unacknowledged job(s) could be requeued; "
                "they stay in Redis's unacked set and return to the queue after the "
                "visibility timeout",
                held,
            )
            return
        super().restore_unacked(client)


class _Channel(redis.Channel):
    QoS = _QoS


class Transport(redis.Transport):
    """kombu's Redis transport; set as Celery's ``broker_transport``."""

    Channel = _Channel


#: ``broker_transport`` value naming :class:`Transport`.
TRANSPORT = f"{__name__}:Transport"
