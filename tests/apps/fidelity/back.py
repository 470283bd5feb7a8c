"""The fidelity backend (raw ASGI; run with uvicorn): GET /leaf?from=ID&k=J answers
"leaf ID J" after 0-3 ms; anything else is 404."""
import asyncio
import random
from urllib.parse import parse_qs

from asgi import serve


async def route(scope):
    if scope["path"] != "/leaf":
        return 404, b"not found"
    query = parse_qs(scope["query_string"].decode())
    await asyncio.sleep(random.uniform(0, 0.003))
    return 200, f"leaf {query.get('from', ['?'])[0]} {query.get('k', ['0'])[0]}".encode()


async def app(scope, receive, send):
    await serve(scope, receive, send, route)
