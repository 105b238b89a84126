"""The seed's `process_image` on Celery with Pillow, for `warren-bench --peers`.

The pattern Warren's image worker replaces: a Celery task that opens the
uploaded image with Pillow and writes one JPEG thumbnail per size
(``Image.thumbnail``, which lets libjpeg-turbo decode a JPEG at a reduced
DCT scale, then a JPEG save of quality 85), run by a prefork worker with
2 processes and ``acks_late``. Configured from the environment (set by
bench/src/thumbnails.rs):

* ``BENCH_AMQP_URL``: the broker; ``BENCH_QUEUE``: queue and exchange name
  (inside the bench's namespace, deleted afterwards);
* ``BENCH_OUT``: the directory the thumbnails go to. Each is written under
  a temporary name and renamed, so the bench, counting the ``.jpg`` files,
  never counts half an image (Warren's store does the same).

``python celery_image.py publish N SOURCE...`` publishes N tasks, the
sources in turn, and exits; the worker runs as
``celery -A celery_image worker ...``.
"""

import json
import os
import sys

from celery import Celery
from PIL import Image

QUEUE = os.environ.get("BENCH_QUEUE", "bench.celery-image")
OUT = os.environ.get("BENCH_OUT", "/tmp/bench-celery-image")
QUALITY = 85

app = Celery("celery_image", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
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


@app.task(name="process_image", bind=True, acks_late=True)
def process_image(self, source, sizes):
    for width, height in sizes:
        # Opened per size and not loaded first, so `thumbnail` can ask
        # libjpeg-turbo for a reduced DCT scale (`draft`): Pillow at its
        # fastest, as the thumbnails benchmark runs it.
        with Image.open(source) as image:
            image.thumbnail((width, height))
            thumb = image if image.mode == "RGB" else image.convert("RGB")
            path = os.path.join(OUT, f"{self.request.id}-{width}x{height}.jpg")
            tmp = path + ".part"
            thumb.save(tmp, "JPEG", quality=QUALITY)
            os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "publish":
        n = int(sys.argv[2])
        sources = sys.argv[3:]
        sizes = json.loads(os.environ.get("BENCH_SIZES", "[[500, 500]]"))
        with app.producer_or_acquire() as producer:
            for i in range(n):
                process_image.apply_async((sources[i % len(sources)], sizes), producer=producer)
        print(f"published {n}", flush=True)
    else:
        sys.exit("usage: celery_image.py publish N SOURCE...")
