"""The fidelity front on aiohttp: an aiohttp web server calling the backend with one shared
aiohttp.ClientSession (keep-alive). GET /call?req=ID as in front_asgi.py.
Run: python front_aiohttp.py PORT (FIDELITY_BACKEND names the backend)."""
import asyncio
import os
import random
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

BACKEND = os.environ["FIDELITY_BACKEND"]


async def call(request):
    req = request.query.get("req", "")
    await asyncio.sleep(random.uniform(0, 0.020))
    async with request.app["client"].get(f"{BACKEND}/leaf", params={"from": req, "k": "0"}) as r:
        await r.read()
        r.raise_for_status()
    await asyncio.sleep(random.uniform(0, 0.010))
    return web.Response(text=f"called {req}")


async def client_session(app):
    app["client"] = ClientSession(connector=TCPConnector(limit=200), timeout=ClientTimeout(total=30))
    yield
    await app["client"].close()


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/call", call)
    app.cleanup_ctx.append(client_session)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
