"""The fidelity backend (raw ASGI; run with uvicorn): GET /leaf?from=ID&k=J answers
"leaf ID J" after 0-3 ms; anything else is 404."""
import asyncio
import random
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    status, body = 404, b"not found"
    if scope["path"] == "/leaf":
        query = parse_qs(scope["query_string"].decode())
        await asyncio.sleep(random.uniform(0, 0.003))
        status, body = 200, f"leaf {query.get('from', ['?'])[0]} {query.get('k', ['0'])[0]}".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
