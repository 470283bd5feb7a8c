"""The fidelity front on aiohttp: an aiohttp web server calling the backend with one shared
aiohttp.ClientSession (keep-alive). GET /call?req=ID as in front_asgi.py, FIDELITY_FANOUT and
FIDELITY_EAGER too (eager tasks and no first sleep: a call on a pooled connection is sent in
the task's first step, inside create_task).
Run: python front_aiohttp.py PORT (FIDELITY_BACKEND names the backend)."""
import asyncio
import os
import random
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

BACKEND = os.environ["FIDELITY_BACKEND"]
FANOUT = os.environ.get("FIDELITY_FANOUT") == "1"
EAGER = os.environ.get("FIDELITY_EAGER") == "1"


async def leaf(client, req, k):
    async with client.get(f"{BACKEND}/leaf", params={"from": req, "k": str(k)}) as r:
        await r.read()
        r.raise_for_status()


async def call(request):
    req = request.query.get("req", "")
    client = request.app["client"]
    if not EAGER:
        # Eager: no first sleep, so the request's task (eager on 3.12+ in aiohttp) calls and
        # creates tasks in its first step, inside its own creation.
        await asyncio.sleep(random.uniform(0, 0.020))
    if FANOUT:
        later = asyncio.create_task(leaf(client, req, 3))
        await asyncio.gather(*(leaf(client, req, k) for k in range(3)))
        await later
    else:
        await leaf(client, req, 0)
    await asyncio.sleep(random.uniform(0, 0.010))
    return web.Response(text=f"called {req}")


async def client_session(app):
    if EAGER:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    app["client"] = ClientSession(connector=TCPConnector(limit=200), timeout=ClientTimeout(total=30))
    yield
    await app["client"].close()


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/call", call)
    app.cleanup_ctx.append(client_session)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
