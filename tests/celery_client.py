"""A real Celery 5 client, as an application using Celery would be: it
sends tasks with ``.delay``, ``.apply_async`` and ``send_task`` to RabbitMQ and
reads their results with ``AsyncResult`` from Celery's Redis result backend.
Warren's Celery bridge and email worker are on the other side.

Driven by tests/tests/behaviour/celery.rs: the settings come as arguments,
the calls as a JSON list on stdin; each call's outcome is printed as one
JSON line on stdout, in order::

    {"call": "delay", "args": ["ada@example.com", "Hi", "Hello"]}
    {"call": "apply_async", "args": [...], "countdown": 2, "priority": 7}
    {"call": "apply_async", "kwargs": {...}}
    {"call": "apply_async", "args": [...], "serializer": "pickle"}
    {"call": "send_task", "name": "app.tasks.unknown", "args": [...]}
    {"call": "apply_async", "args": [...], "link": SIG, "link_error": SIG}
    {"call": "chain", "steps": [SIG, SIG, ...]}

where SIG is {"name": ..., "args": [...], "kwargs": {...}, "immutable": false}:
``app.signature(name, args, kwargs)`` (``.s()``), or ``.si()`` when
immutable. A chain is sent as ``(a | b | ...).delay()``; its outcome line
has the ids of all its steps, first to last ("ids"), and the result of the
last, as ``AsyncResult(last_id).get()`` returns it.

With "wait" true (the default) the script waits, with ``.get(timeout=...)``,
for each result; it prints the task id before it waits ({"sent": id}).
"""

import argparse
import functools
import json
import operator
import sys

from celery import Celery


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--routing-key", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    opts = parser.parse_args()

    app = Celery("app", broker=opts.broker, backend=opts.backend)
    app.conf.update(
        task_default_queue=opts.queue,
        task_default_exchange=opts.exchange,
        task_default_exchange_type="direct",
        task_default_routing_key=opts.routing_key,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )

    # The application's task, as its code declares it. It never runs here:
    # Warren's email worker does the work.
    @app.task(name="app.tasks.send_email_task")
    def send_email_task(to, subject, body):  # pragma: no cover
        raise RuntimeError("runs in Warren")

    # A second task, chained after the first: it receives the first one's
    # result as its first argument, as Celery passes it.
    @app.task(name="app.tasks.send_receipt")
    def send_receipt(delivered, to, template=None):  # pragma: no cover
        raise RuntimeError("runs in Warren")

    def sig(spec):
        return app.signature(
            spec["name"],
            args=spec.get("args", []),
            kwargs=spec.get("kwargs", {}),
            immutable=spec.get("immutable", False),
        )

    calls = json.load(sys.stdin)
    for call in calls:
        kind = call["call"]
        args = call.get("args", [])
        kwargs = call.get("kwargs", {})
        if kind == "delay":
            result = send_email_task.delay(*args, **kwargs)
        elif kind == "apply_async":
            options = {
                k: call[k]
                for k in ("countdown", "priority", "serializer", "expires")
                if k in call
            }
            for k in ("link", "link_error"):
                if k in call:
                    options[k] = sig(call[k])
            result = send_email_task.apply_async(args=args, kwargs=kwargs, **options)
        elif kind == "chain":
            result = functools.reduce(operator.or_, map(sig, call["steps"])).delay()
        elif kind == "send_task":
            result = app.send_task(call["name"], args=args, kwargs=kwargs)
        else:
            raise SystemExit(f"unknown call {kind!r}")
        print(json.dumps({"sent": result.id}), flush=True)
        if not call.get("wait", True):
            continue
        value = result.get(timeout=opts.timeout, propagate=False)
        out = {"id": result.id, "status": result.status}
        if kind == "chain":
            ids, node = [], result
            while node is not None:
                ids.insert(0, node.id)
                node = node.parent
            out["ids"] = ids
        if isinstance(value, BaseException):
            out["error_type"] = type(value).__name__
            out["error"] = str(value)
        else:
            out["result"] = value
        out["traceback"] = result.traceback
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
