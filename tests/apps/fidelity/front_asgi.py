"""The fidelity front as a raw ASGI app (run with uvicorn, --loop asyncio or uvloop).

GET /call?req=ID: sleep 0-20 ms, GET FIDELITY_BACKEND/leaf?from=ID&k=0 with one shared
httpx.AsyncClient (keep-alive), sleep 0-10 ms, answer 200. With FIDELITY_FANOUT=1: a task
calling k=3 is created first, k=0..2 are called with asyncio.gather, then the task is awaited.
With FIDELITY_EAGER=1 (CPython 3.12+): tasks start eagerly (asyncio.eager_task_factory) and
the first sleep is left out, so the request's task creates its tasks in its first step.
With FIDELITY_LOGS=1 (the log-correlation scenario): the handler logs a record before its
call and one after, and a child task it creates and awaits logs one, each naming the request
(`fidelity req=ID where=...`, stdlib logging to stderr), so their trace ids can be scored.
With FIDELITY_AFTER=1: the request is answered at once and its task makes the call after
the response (a background task, as Starlette runs them).
With FIDELITY_POOL=1: the call is made on a thread pool with a shared sync httpx.Client, half
the requests through asyncio.to_thread, half through anyio.to_thread.run_sync (what
Starlette's run_in_threadpool and FastAPI's sync handlers use), picked by the id's CRC.
With FIDELITY_NO_SLEEP=1: the handler's sleeps are left out (a throughput benchmark's front:
`cargo xtask bench`).
"""
import asyncio
import logging
import os
import sys
import random
import zlib
from urllib.parse import parse_qs

import anyio.to_thread
import httpx

from asgi import serve

BACKEND = os.environ["FIDELITY_BACKEND"]
FANOUT = os.environ.get("FIDELITY_FANOUT") == "1"
EAGER = os.environ.get("FIDELITY_EAGER") == "1"
LOGS = os.environ.get("FIDELITY_LOGS") == "1"
AFTER = os.environ.get("FIDELITY_AFTER") == "1"
POOL = os.environ.get("FIDELITY_POOL") == "1"
NO_SLEEP = os.environ.get("FIDELITY_NO_SLEEP") == "1"
state = {}
log = logging.getLogger("fidelity")
if LOGS:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


async def child(req):
    await asyncio.sleep(random.uniform(0, 0.005))
    log.info("fidelity req=%s where=child", req)


def sync_leaf(req, k):
    r = state["sync"].get(f"{BACKEND}/leaf", params={"from": req, "k": str(k)})
    r.raise_for_status()
    return r.status_code


async def leaf(req, k):
    if POOL:
        if zlib.crc32(req.encode()) % 2:
            return await asyncio.to_thread(sync_leaf, req, k)
        return await anyio.to_thread.run_sync(sync_leaf, req, k)
    r = await state["client"].get(f"{BACKEND}/leaf", params={"from": req, "k": str(k)})
    r.raise_for_status()
    return r.status_code


async def handle(req):
    if not (EAGER or NO_SLEEP):
        await asyncio.sleep(random.uniform(0, 0.020))
    if LOGS:
        log.info("fidelity req=%s where=handler", req)
        await asyncio.create_task(child(req))
    if FANOUT:
        later = asyncio.create_task(leaf(req, 3))
        await asyncio.gather(leaf(req, 0), leaf(req, 1), leaf(req, 2))
        await later
    else:
        await leaf(req, 0)
    if LOGS:
        log.warning("fidelity req=%s where=after-call", req)
    if not NO_SLEEP:
        await asyncio.sleep(random.uniform(0, 0.010))


async def route(scope):
    if scope["path"] != "/call":
        return 404, b"not found"
    req = parse_qs(scope["query_string"].decode()).get("req", [""])[0]
    if AFTER:
        return 202, f"accepted {req}".encode(), lambda: handle(req)
    await handle(req)
    return 200, f"called {req}".encode()


async def startup():
    state["client"] = httpx.AsyncClient(timeout=30)
    if POOL:
        state["sync"] = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=50))
    if EAGER:
        # 3.12+: a new task runs its first step inside create_task (in Task.__init__).
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)


async def shutdown():
    await state["client"].aclose()
    if POOL:
        state["sync"].close()


async def app(scope, receive, send):
    await serve(scope, receive, send, route, startup, shutdown)
