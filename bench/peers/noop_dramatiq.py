"""Dramatiq's no-op actor for `warren-bench --peers` (see noop.py): the
RabbitMQ broker, acked after the actor returns (Dramatiq's default)."""

import dramatiq

from noop import QUEUE, dramatiq_broker, mark

dramatiq_broker()


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop():
    mark()
