"""A two-tier ASGI app for traceo's span tests: run two copies with uvicorn, the first with
DOWNSTREAM=http://127.0.0.1:<port of the second>. One event loop per process (asyncio).

GET /call?i=N  calls DOWNSTREAM/leaf/N with httpx (one shared AsyncClient) and answers
               "called <status>". It sends no trace header; it forwards X-Request-ID when the
               request has one (a common correlation middleware), nothing else.
GET /leaf/N    answers "leaf N" after a few milliseconds (varying with N).
"""
import asyncio
import os
from urllib.parse import parse_qs

import httpx

DOWNSTREAM = os.environ.get("DOWNSTREAM", "")
state = {}


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state["client"] = httpx.AsyncClient(timeout=20)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await state["client"].aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    headers = dict(scope["headers"])
    status, body = 404, b"not found"
    if path == "/call":
        i = query.get("i", ["0"])[0]
        forward = {}
        if b"x-request-id" in headers:
            forward["X-Request-ID"] = headers[b"x-request-id"].decode()
        r = await state["client"].get(f"{DOWNSTREAM}/leaf/{i}", headers=forward)
        status, body = 200, f"called {r.status_code}".encode()
    elif path.startswith("/leaf/"):
        n = int(path.rsplit("/", 1)[1] or 0)
        await asyncio.sleep(0.002 * (1 + n % 4))
        status, body = 200, f"leaf {n}".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
