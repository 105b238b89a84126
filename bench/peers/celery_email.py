"""The seed's email task on Celery, for `warren-bench --peers`.

The pattern Warren replaces: a Celery task that renders the welcome email
and sends it with smtplib over one fresh SMTP connection per email, run by a
prefork worker (2 processes) with ``acks_late``. Configured from the
environment (set by bench/src/peers/celery.rs):

* ``BENCH_AMQP_URL``: the broker; ``BENCH_QUEUE``: queue and exchange name
  (inside the bench's namespace, deleted afterwards);
* ``BENCH_SMTP_PORT``: the SMTP server on 127.0.0.1;
* ``BENCH_TEMPLATES``: services/email-worker/templates.

``python celery_email.py publish N`` publishes N tasks and exits; the worker
runs as ``celery -A celery_email worker ...``.
"""

import os
import smtplib
import sys
from email.message import EmailMessage
from pathlib import Path

from celery import Celery

QUEUE = os.environ.get("BENCH_QUEUE", "bench.celery-email")

app = Celery("celery_email", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)

TEMPLATES = Path(os.environ.get("BENCH_TEMPLATES", "templates")) / "welcome"
SUBJECT = (TEMPLATES / "subject.txt").read_text().strip() if TEMPLATES.exists() else "Welcome, {{ name }}!"
TEXT = (TEMPLATES / "body.txt").read_text() if TEMPLATES.exists() else "Hello {{ name }},\n"
HTML = (TEMPLATES / "body.html").read_text() if TEMPLATES.exists() else "<p>Hello {{ name }}</p>"


def render(template, name):
    # The welcome template's only variable; the optional `product` block is
    # left out, as Warren renders it without one.
    out = template.replace("{{ name }}", name)
    start = out.find("{% if product")
    if start != -1:
        end = out.find("{% endif %}", start)
        out = out[:start] + out[end + len("{% endif %}"):]
    return out


@app.task(name="send_welcome_email", acks_late=True)
def send_welcome_email(to, name):
    msg = EmailMessage()
    msg["From"] = "Warren Bench <bench@warren.test>"
    msg["To"] = to
    msg["Subject"] = render(SUBJECT, name)
    msg.set_content(render(TEXT, name))
    msg.add_alternative(render(HTML, name), subtype="html")
    with smtplib.SMTP("127.0.0.1", int(os.environ["BENCH_SMTP_PORT"])) as smtp:
        smtp.send_message(msg)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "publish":
        n = int(sys.argv[2])
        with app.producer_or_acquire() as producer:
            for i in range(n):
                send_welcome_email.apply_async(("user0@warren.test", "User 0"), producer=producer)
        print(f"published {n}", flush=True)
    else:
        sys.exit("usage: celery_email.py publish N")
