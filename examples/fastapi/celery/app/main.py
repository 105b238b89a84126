"""The seed's FastAPI app, with its Celery client code unchanged.

    POST /users            register a user; a welcome email goes out
    POST /images           upload an image; thumbnails are made
    POST /orders           validate -> process -> save, as one Celery chain
    GET  /orders/{id}      the chain's last step and each step, from AsyncResult
    GET  /task/{task_id}   the task's state and result, from AsyncResult

Warren's email, image and pipeline workers do the work, behind the Celery bridge
(examples/fastapi/celery/warren.toml). Run it with examples/fastapi/run celery.
"""

import base64
import uuid

from celery import chain
from celery.result import AsyncResult
from fastapi import FastAPI, File, HTTPException, UploadFile
from pydantic import BaseModel

from .tasks import (
    celery_app,
    process_image,
    process_order,
    save_order,
    send_email_task,
    validate_order,
)

app = FastAPI(title="Warren example: FastAPI with Celery's client")

THUMBNAIL_SIZES = [
    {"width": 256, "height": 256},
    {"width": 64, "height": 64, "fit": "cover", "format": "webp"},
]
# The image worker takes an inline image up to 1 MiB (image.max_inline_bytes).
MAX_IMAGE_BYTES = 1024 * 1024


class UserIn(BaseModel):
    email: str
    name: str


@app.post("/users", status_code=202)
def register_user(user: UserIn):
    # ... store the user ...
    task = send_email_task.delay(
        user.email, "Welcome!", f"Hello {user.name}, welcome aboard."
    )
    return {"email": user.email, "task_id": task.id}


@app.post("/images", status_code=202)
async def upload_image(file: UploadFile = File(...)):
    data = await file.read()
    if not data:
        raise HTTPException(status_code=422, detail="file: empty upload")
    if len(data) > MAX_IMAGE_BYTES:
        raise HTTPException(status_code=413, detail="file: larger than 1 MiB")
    task = process_image.delay(
        {"base64": base64.b64encode(data).decode()}, THUMBNAIL_SIZES
    )
    return {"task_id": task.id}


def describe(task_id: str) -> dict:
    result = AsyncResult(task_id, app=celery_app)
    out = {"task_id": task_id, "status": result.status}
    if result.successful():
        out["result"] = result.result
    elif result.failed():
        out["error"] = str(result.result)
    return out


@app.get("/task/{task_id}")
def task_status(task_id: str):
    return describe(task_id)


class OrderIn(BaseModel):
    id: str
    value: int
    factor: int = 3


ORDER_STEPS = ("validate", "process", "save")


@app.post("/orders", status_code=202)
def place_order(order: OrderIn):
    # Each step gets the task id {order_id}-{step}, so GET /orders/{id}
    # finds every step again from the order's id alone (an AsyncResult made
    # from an id has no .parent).
    order_id = uuid.uuid4().hex
    result = chain(
        validate_order.s({"id": order.id, "value": order.value}).set(task_id=f"{order_id}-validate"),
        process_order.s(order.factor).set(task_id=f"{order_id}-process"),
        save_order.s().set(task_id=f"{order_id}-save"),
    ).delay()
    # result is the last step's AsyncResult; result.parent the one before.
    return {"order_id": order_id, "task_id": result.id}


@app.get("/orders/{order_id}")
def order_status(order_id: str):
    # The order's state is its last step's: SUCCESS once save_order ran.
    out = describe(f"{order_id}-save")
    out["order_id"] = order_id
    out["steps"] = [
        {"step": step, **describe(f"{order_id}-{step}")} for step in ORDER_STEPS
    ]
    return out
