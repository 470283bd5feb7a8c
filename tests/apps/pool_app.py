"""A FastAPI app whose work runs on thread pools (tests/logs.rs): a sync handler (run
by Starlette's run_in_threadpool, i.e. anyio's to_thread.run_sync) and an async handler that
hands a sync function to asyncio.to_thread. Both log and call /leaf on this same app with a
shared sync httpx.Client, from the pool thread. Every record and call names its request id
(`[rid:N]`, `from=N`): the ground truth.
"""

import asyncio
import logging
import os
import random
import time

import httpx
from fastapi import FastAPI

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("pool")
app = FastAPI()
client = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=64))
SELF = f"http://127.0.0.1:{os.environ['POOL_PORT']}"


def blocking_work(rid: str, how: str):
    log.info("pool start [rid:%s] via %s", rid, how)
    time.sleep(random.uniform(0, 0.02))
    client.get(f"{SELF}/leaf", params={"from": rid}).raise_for_status()
    log.warning("pool end [rid:%s] via %s", rid, how)
    return {"rid": rid}


@app.get("/sync")
def sync_handler(rid: str):
    return blocking_work(rid, "run_in_threadpool")


@app.get("/to_thread")
async def to_thread_handler(rid: str):
    await asyncio.sleep(random.uniform(0, 0.01))
    return await asyncio.to_thread(blocking_work, rid, "to_thread")


@app.get("/leaf")
async def leaf():
    await asyncio.sleep(random.uniform(0, 0.005))
    return {"ok": True}
