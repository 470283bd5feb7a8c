"""A FastAPI app that logs with the stdlib logger inside its handlers (tests/logs.rs).

Every record names its request id (`[rid:N]`) so the test knows which request wrote it.
"""

import asyncio
import logging
import os
import random

from fastapi import FastAPI

# Python logging's default format (LEVEL:logger:message) on stderr, as most services leave it.
logging.basicConfig(level=logging.INFO)
log = logging.getLogger("shop.orders")
if os.environ.get("LOG_FILE"):
    # Also a log file (tests `--log-file`), opened at start as services do.
    handler = logging.FileHandler(os.environ["LOG_FILE"])
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    log.addHandler(handler)

app = FastAPI()

SECRET = "hunter2-s3cr3t-value"


@app.get("/work")
async def work(rid: str):
    log.info("start [rid:%s]", rid)
    await asyncio.sleep(random.uniform(0.01, 0.08))
    log.warning("end [rid:%s] took a while", rid)
    return {"rid": rid}


@app.get("/boom")
async def boom(rid: str):
    log.info("about to fail [rid:%s]", rid)
    await asyncio.sleep(0.01)
    raise ValueError(f"boom [rid:{rid}]")


@app.get("/secret")
async def secret(rid: str):
    log.info("login [rid:%s] password=%s Authorization: Bearer %s", rid, SECRET, SECRET)
    return {"ok": True}


async def background():
    while True:
        await asyncio.sleep(0.05)
        log.info("background tick outside any request")


@app.on_event("startup")
async def start_background():
    asyncio.get_running_loop().create_task(background())
