"""A small ASGI app for traceo's live tests (run with uvicorn).

GET  /hello          -> 200 "hello"
GET  /slow           -> 200 after 30 ms (a latency the histogram tests can place in a bucket)
GET  /status/{code}  -> that status, short body
POST /upload         -> 200 {"received": <body bytes>}
"""
import asyncio
import json


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    received = 0
    more = True
    while more:
        message = await receive()
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    status, body, ctype = 404, b"not found", b"text/plain"
    if path == "/hello":
        status, body = 200, b"hello"
    elif path == "/slow":
        await asyncio.sleep(0.03)
        status, body = 200, b"slow"
    elif path.startswith("/status/"):
        status, body = int(path.rsplit("/", 1)[1]), b"status"
    elif path == "/upload":
        status, body, ctype = 200, json.dumps({"received": received}).encode(), b"application/json"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
