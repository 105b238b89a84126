#!/usr/bin/env python3
"""Publish a Warren task from Python with pika, by the documented contract.

docs/contract.md ("Publishing a task from your code") is the contract this
follows: the task goes to `{namespace}.tasks` with its type as routing key,
persistent, with a task id, a priority, a timestamp and W3C trace context,
`mandatory` set and publisher confirms on, so a task is either accepted by
the broker or the call raises.

    WARREN_BROKER__URL=amqp://guest:guest@127.0.0.1:5672/%2f \
      python3 publish_task.py email.send '{"to": "ada@example.com", "subject": "Hi", "text": "Hello"}' \
      --priority 5

Prints the task id (look it up with `GET /v1/tasks/{id}` on the gateway).
The broker URL and namespace come from the same environment variables as
Warren's own services (WARREN_BROKER__URL, WARREN_BROKER__NAMESPACE).
"""

import argparse
import json
import os
import secrets
import sys
import time
import uuid

import pika
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError


def new_traceparent() -> str:
    """A fresh W3C trace context (version 00, sampled). With OpenTelemetry in
    your app, inject the current span's context instead."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def publish_task(channel, namespace: str, task_type: str, body: dict, *, task_id=None,
                 priority: int = 0, traceparent=None) -> str:
    """Publishes one task on a channel in confirm mode; returns its id.

    Raises pika.exceptions.UnroutableError if no worker has declared a queue
    for the type, NackError if the broker refused it.
    """
    if not 0 <= priority <= 9:
        raise ValueError("priority must be 0-9")
    task_id = task_id or str(uuid.uuid4())
    channel.basic_publish(
        exchange=f"{namespace}.tasks",
        routing_key=task_type,
        body=json.dumps(body).encode(),
        properties=pika.BasicProperties(
            message_id=task_id,
            content_type="application/json",
            delivery_mode=2,  # persistent
            priority=priority,
            type=task_type,
            timestamp=int(time.time()),
            headers={"traceparent": traceparent or new_traceparent()},
        ),
        mandatory=True,
    )
    return task_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("type", help="task type, e.g. email.send")
    parser.add_argument("body", help="task body, a JSON object")
    parser.add_argument("--id", help="task id (default: a new UUID)")
    parser.add_argument("--priority", type=int, default=0, help="0-9, 9 first")
    parser.add_argument("--traceparent", help="W3C trace context (default: a new trace)")
    args = parser.parse_args()

    body = json.loads(args.body)
    if not isinstance(body, dict):
        parser.error("body must be a JSON object")
    url = os.environ.get("WARREN_BROKER__URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    namespace = os.environ.get("WARREN_BROKER__NAMESPACE", "warren")

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()  # basic_publish now waits for the broker's confirm
        task_id = publish_task(channel, namespace, args.type, body, task_id=args.id,
                               priority=args.priority, traceparent=args.traceparent)
    except UnroutableError:
        print(f"not accepted: no queue is bound for {args.type!r} (is its worker running?)",
              file=sys.stderr)
        return 1
    except NackError:
        print("not accepted: the broker refused the task", file=sys.stderr)
        return 1
    except ChannelClosedByBroker as e:  # e.g. NOT_FOUND: no worker has declared the exchange yet
        print(f"not accepted: {e.reply_text}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(task_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
