"""The application's Celery tasks, as a Celery application declares them.

This file is the seed's, unchanged in what matters: the task names, their
arguments and `.delay(...)` at the call sites. The bodies never run here:
Warren's workers do the work behind the Celery bridge (see
warren.toml next to this package, and docs/celery.md).
"""

import os

from celery import Celery
from celery.schedules import crontab

celery_app = Celery(
    "app",
    broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
)
celery_app.conf.update(
    # Celery's defaults; set here so a deployment (or a test) can give the
    # app a queue of its own, the one the Warren bridge consumes.
    task_default_queue=os.environ.get("CELERY_QUEUE", "celery"),
    task_default_exchange=os.environ.get("CELERY_EXCHANGE", "celery"),
    task_default_exchange_type="direct",
    task_default_routing_key=os.environ.get("CELERY_ROUTING_KEY", "celery"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # Celery Beat's schedule, as the seed has it. With Warren, Beat is not
    # run: the conductor fires the same schedule from ../conductor.toml
    # (docs/conductor.md), once per fire however many conductors run.
    beat_schedule={
        "send-digest-weekly": {
            "task": "app.tasks.send_email_task",
            "schedule": crontab(minute=0, hour=9, day_of_week=1),
            "args": ("team@example.com", "Weekly digest", "Here is the week."),
            "options": {"priority": 5},
        },
    },
)


@celery_app.task(name="app.tasks.send_email_task")
def send_email_task(email, subject, body):  # pragma: no cover - Warren runs it
    raise RuntimeError("Warren's email worker runs this task")


@celery_app.task(name="app.tasks.process_image")
def process_image(source, sizes):  # pragma: no cover - Warren runs it
    raise RuntimeError("Warren's image worker runs this task")


# The seed's order pipeline, validate -> process -> save, sent as one
# chain: each task gets the previous one's result as its first argument.


@celery_app.task(name="app.tasks.validate_order")
def validate_order(order):  # pragma: no cover - Warren runs it
    raise RuntimeError("Warren's pipeline worker runs this task")


@celery_app.task(name="app.tasks.process_order")
def process_order(order, factor):  # pragma: no cover - Warren runs it
    raise RuntimeError("Warren's pipeline worker runs this task")


@celery_app.task(name="app.tasks.save_order")
def save_order(order):  # pragma: no cover - Warren runs it
    raise RuntimeError("Warren's pipeline worker runs this task")
