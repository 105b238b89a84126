"""No-op tasks on Celery and Dramatiq, for `warren-bench --peers`.

The same job as Warren's consume and publish sections: N tasks that do
nothing, on the same broker, in a queue of the bench's namespace (deleted
afterwards). Configured from the environment (set by
bench/src/peers/noop.rs):

* ``BENCH_AMQP_URL``: the broker; ``BENCH_QUEUE``: the queue (for Celery
  also its exchange and routing key);
* ``BENCH_MARKS``: a file each task appends one line to, the time it ran in
  nanoseconds (20 bytes). The bench counts the lines to know when all N
  ran, and takes the first and last time: msg/s from the first task to the
  last, as Warren is timed from its first handler start to its last ack.
  One ``write`` per task is the handler's only work.

``python noop.py celery publish N`` / ``python noop.py dramatiq publish N``
publish N tasks and print ``published N in S s``; the workers run as
``celery -A noop_celery worker ...`` and ``dramatiq noop_dramatiq ...``
(the two small modules beside this one).

Each publisher runs with its framework's defaults: neither confirms a
publish unless asked (Celery's ``confirm_publish``, Dramatiq's
``confirm_delivery``), so both are unconfirmed here, where Warren's and the
bare lapin publisher wait for confirms.
"""

import os
import sys
import time

QUEUE = os.environ.get("BENCH_QUEUE", "bench.peer-noop")
URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
MARKS = os.environ.get("BENCH_MARKS", "/tmp/bench-noop-marks")

_marks = None


def mark():
    """Appends this task's time (one O_APPEND write: atomic across processes)."""
    global _marks
    if _marks is None:
        _marks = os.open(MARKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_marks, b"%019d\n" % time.time_ns())


def celery_app():
    from celery import Celery

    app = Celery("noop_celery", broker=URL)
    app.conf.update(
        task_default_queue=QUEUE,
        task_default_exchange=QUEUE,
        task_default_routing_key=QUEUE,
        task_acks_late=True,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    return app


def dramatiq_broker():
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=URL)
    dramatiq.set_broker(broker)
    return broker


def publish(framework, n):
    started = time.perf_counter()
    if framework == "celery":
        from noop_celery import noop

        with noop.app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async((), producer=producer)
    elif framework == "dramatiq":
        from noop_dramatiq import noop

        for _ in range(n):
            noop.send()
    else:
        sys.exit(f"unknown framework {framework}")
    elapsed = time.perf_counter() - started
    print(f"published {n} in {elapsed:.6f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "publish":
        publish(sys.argv[1], int(sys.argv[3]))
    else:
        sys.exit("usage: noop.py celery|dramatiq publish N")
