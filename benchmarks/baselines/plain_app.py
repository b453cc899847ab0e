"""The baseline benchmarks/serve.py measures polymodal serve against: what a user would write
instead — one uvicorn process, the model in-process, a tiny asyncio micro-batcher.

Run: PLAIN_CHECKPOINT=CKPT .venv/bin/python -m uvicorn benchmarks.baselines.plain_app:app
(benchmarks/serve.py starts it itself on a free port.)
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from polymodal.inference.model import LoadedModel
from polymodal.serving.inputs import parse_item

MAX_BATCH = int(os.environ.get("PLAIN_MAX_BATCH", "32"))
WAIT_S = float(os.environ.get("PLAIN_WAIT_S", "0.002"))

model = LoadedModel.load(os.environ["PLAIN_CHECKPOINT"])
queue: asyncio.Queue = asyncio.Queue()


class Request(BaseModel):
    model: str
    input: str | list[str]


async def batcher() -> None:
    """Items waiting are embedded together, one forward per modality."""
    while True:
        items = [await queue.get()]
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while len(items) < MAX_BATCH:
            timeout = deadline - asyncio.get_running_loop().time()
            try:
                get = (
                    queue.get_nowait()
                    if timeout <= 0
                    else await asyncio.wait_for(queue.get(), timeout)
                )
                items.append(get)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        for modality in {m for m, _, _ in items}:
            group = [(v, f) for m, v, f in items if m == modality]
            vectors = model.embed(modality, [v for v, _ in group])
            for (_, future), vector in zip(group, vectors):
                future.set_result(vector)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    task = asyncio.create_task(batcher())
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/embeddings")
async def embeddings(body: Request) -> dict:
    items = [body.input] if isinstance(body.input, str) else body.input
    futures = []
    for i, item in enumerate(items):
        modality, value = parse_item(item, f"input[{i}]")
        futures.append(asyncio.get_running_loop().create_future())
        queue.put_nowait((modality, value, futures[-1]))
    vectors: list[np.ndarray] = await asyncio.gather(*futures)
    data = [
        {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)
    ]
    return {"object": "list", "data": data, "model": body.model}
