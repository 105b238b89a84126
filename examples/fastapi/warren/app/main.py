"""The seed's FastAPI app on Warren's own contract.

    POST /users            register a user; a welcome email goes out
    POST /images           upload an image; thumbnails are made
    POST /orders           validate -> process -> save, as one Warren chain
    GET  /task/{task_id}   the task's status, from the Warren gateway

Tasks are published with aio-pika by docs/contract.md: to `{namespace}.tasks`
with the task type as routing key, persistent, with an id, a priority, a
timestamp and W3C trace context, `mandatory` set and publisher confirms on,
so a task is accepted by the broker or the request fails. The image upload
and the chain go through the gateway's HTTP API (`POST /v1/images`,
`POST /v1/workflows`), which stores the upload where the image worker reads
it and checks the chain before publishing it.

Settings (the environment variables of Warren's own services, plus one):
WARREN_BROKER__URL, WARREN_BROKER__NAMESPACE, WARREN_GATEWAY_URL.
Run it with examples/fastapi/run warren.
"""

import json
import os
import secrets
import time
import uuid
from contextlib import asynccontextmanager

import aio_pika
import httpx
from aio_pika.exceptions import DeliveryError
from fastapi import FastAPI, File, HTTPException, Response, UploadFile
from pydantic import BaseModel

BROKER_URL = os.environ.get("WARREN_BROKER__URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
NAMESPACE = os.environ.get("WARREN_BROKER__NAMESPACE", "warren")
GATEWAY_URL = os.environ.get("WARREN_GATEWAY_URL", "http://127.0.0.1:8080")

THUMBNAIL_SIZES = [
    {"width": 256, "height": 256},
    {"width": 64, "height": 64, "fit": "cover", "format": "webp"},
]


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.amqp = await aio_pika.connect_robust(BROKER_URL)
    # Confirms on, and a returned (unroutable) message raises DeliveryError.
    app.state.channel = await app.state.amqp.channel(
        publisher_confirms=True, on_return_raises=True
    )
    app.state.tasks = await app.state.channel.get_exchange(f"{NAMESPACE}.tasks", ensure=False)
    app.state.gateway = httpx.AsyncClient(base_url=GATEWAY_URL, timeout=30.0)
    try:
        yield
    finally:
        await app.state.gateway.aclose()
        await app.state.amqp.close()


app = FastAPI(title="Warren example: FastAPI on Warren's contract", lifespan=lifespan)


def new_traceparent() -> str:
    """A fresh W3C trace context (version 00, sampled). With OpenTelemetry in
    the app, inject the current span's context instead."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


async def publish_task(task_type: str, body: dict, *, priority: int = 0) -> str:
    """Publishes one Warren task and waits for the broker's confirm; returns
    its id. Raises HTTP 503 if the broker refused it or no worker's queue is
    bound for the type."""
    task_id = str(uuid.uuid4())
    message = aio_pika.Message(
        body=json.dumps(body).encode(),
        message_id=task_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=priority,
        type=task_type,
        timestamp=int(time.time()),
        headers={"traceparent": new_traceparent()},
    )
    try:
        await app.state.tasks.publish(message, routing_key=task_type, mandatory=True)
    except DeliveryError as e:
        raise HTTPException(status_code=503, detail=f"{task_type} not accepted: {e}") from e
    return task_id


class UserIn(BaseModel):
    email: str
    name: str


@app.post("/users", status_code=202)
async def register_user(user: UserIn):
    # ... store the user ...
    task_id = await publish_task(
        "email.send",
        {"to": user.email, "subject": "Welcome!", "text": f"Hello {user.name}, welcome aboard."},
        priority=5,
    )
    return {"email": user.email, "task_id": task_id}


async def forward(response: httpx.Response) -> Response:
    """The gateway's answer as it is (a 422 problem document stays one)."""
    return Response(
        content=response.content,
        status_code=response.status_code,
        media_type=response.headers.get("content-type"),
    )


@app.post("/images", status_code=202)
async def upload_image(file: UploadFile = File(...)):
    data = await file.read()
    reply = await app.state.gateway.post(
        "/v1/images",
        files={"file": (file.filename or "upload", data, file.content_type or "application/octet-stream")},
        data={"outputs": json.dumps(THUMBNAIL_SIZES)},
    )
    return await forward(reply)


class OrderIn(BaseModel):
    id: str
    value: int
    factor: int = 3


@app.post("/orders", status_code=202)
async def place_order(order: OrderIn):
    reply = await app.state.gateway.post(
        "/v1/workflows",
        json={
            "kind": "chain",
            "steps": [
                {"type": "pipeline.validate", "body": {"record": {"id": order.id, "value": order.value}}},
                {"type": "pipeline.process", "body": {"factor": order.factor}, "result_to": "input"},
                {"type": "pipeline.save", "body": {}, "result_to": "processed"},
            ],
        },
    )
    return await forward(reply)


@app.get("/task/{task_id}")
async def task_status(task_id: str):
    return await forward(await app.state.gateway.get(f"/v1/tasks/{task_id}"))


@app.get("/orders/{workflow_id}")
async def order_status(workflow_id: str):
    return await forward(await app.state.gateway.get(f"/v1/workflows/{workflow_id}"))
