"""The Redis broker transport: kombu's, with fixes that keep a worker alive when Redis goes
away while it holds unacknowledged jobs.

On a lost broker connection Celery first ``collect()``s the connection, which closes its
transport, then ``close()``s it, which closes the default channel a second time. That second
close requeues the jobs the worker holds (jobs running, or waiting out a retry countdown), and
kombu 5.7 builds a Redis client for it from the closed transport: ``AttributeError: 'NoneType'
object has no attribute 'hostname'``, which Celery treats as unrecoverable, so the worker exits.

A job that finishes (or retries, or is rejected) after that is acknowledged on its message's
channel, which is closed by then: kombu builds a client from the closed channel's missing
connection (``'NoneType' object has no attribute 'client'``), again unrecoverable to Celery.

Here that requeue, and those acknowledgements, are skipped instead. Nothing is lost by
skipping them: the connection they need is gone, and every held job is still in the queue's
unacked set in Redis, from which any worker of the queue requeues it once it is
``visibility_timeout`` old (see ``pipeline.jobs``); a job that had finished runs again, to the
same documents. A Redis that lost its data is covered by the pending journal.
"""

from __future__ import annotations

import logging
from typing import cast

from kombu.transport import redis, virtual

log = logging.getLogger(__name__)


class _QoS(redis.QoS):
    def _closed(self) -> bool:
        """This channel's broker connection is gone: the channel, or its transport, closed."""
        connection = self.channel.connection
        return connection is None or connection.client is None

    def restore_unacked(self, client: object = None) -> None:
        if client is None and self._closed():
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

    def ack(self, delivery_tag: str) -> None:
        if self._closed():
            self._left_unacked(delivery_tag, "acknowledged")
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._closed():
            self._left_unacked(delivery_tag, "rejected")
            return
        super().reject(delivery_tag, requeue)

    def _left_unacked(self, delivery_tag: str, what: str) -> None:
        """Forget the message here only (kombu's in-memory bookkeeping), not in Redis."""
        virtual.QoS.ack(self, delivery_tag)
        log.warning(
            "job message %s could not be %s: its broker connection closed; Redis still "
            "holds the job (requeued, or unacked until the visibility timeout) and it runs again",
            delivery_tag,
            what,
        )


class _Channel(redis.Channel):
    QoS = _QoS


class Transport(redis.Transport):
    """kombu's Redis transport; set as Celery's ``broker_transport``."""

    Channel = _Channel


#: ``broker_transport`` value naming :class:`Transport`.
TRANSPORT = f"{__name__}:Transport"
