"""Celery's no-op task for `warren-bench --peers` (see noop.py): a prefork
worker with `acks_late`, as the seed ran Celery."""

from noop import celery_app, mark

app = celery_app()


@app.task(name="noop", acks_late=True)
def noop():
    mark()
