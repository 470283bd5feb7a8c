"""A small ASGI app for traceo's live tests and golden fixtures (run with uvicorn).

GET    /hello          -> 200 "hello"
GET    /slow           -> 200 after 30 ms (a latency the histogram tests can place in a bucket)
GET    /status/{code}  -> that status, body "status" (no body for 1xx, 204 and 304)
GET    /sized/{code}/{n} -> that status with a body of exactly n bytes (overload tests)
POST   /upload         -> 200 {"received": <body bytes>}
POST   /echo           -> 200, the request body sent back with the request's content type
POST   /items          -> 201 {"id": 1, "received": <body bytes>}
GET    /items/{id}     -> 200 {"id": <id>}
PUT    /items/{id}     -> 200 {"id": <id>, "received": <body bytes>}
DELETE /items/{id}     -> 204, no body
GET    /stream         -> 200 chunked: STREAM_CHUNKS chunks "chunk <i>\n", 10 ms apart
GET    /events         -> 200 text/event-stream, chunked: EVENTS events "data: {"n": <i>}\n\n"
anything else          -> 404 "not found"
"""
import asyncio
import json

STREAM_CHUNKS = 5
EVENTS = 3
NO_BODY = {204, 304}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path, method = scope["path"], scope["method"]
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    request_body = b"".join(chunks)
    received = len(request_body)
    request_type = dict(scope["headers"]).get(b"content-type", b"application/octet-stream")
    status, body, ctype = 404, b"not found", b"text/plain"
    if path == "/hello":
        status, body = 200, b"hello"
    elif path == "/slow":
        await asyncio.sleep(0.03)
        status, body = 200, b"slow"
    elif path.startswith("/sized/"):
        code, size = path.split("/")[2:4]
        status, body = int(code), b"x" * int(size)
    elif path.startswith("/status/"):
        status, body = int(path.rsplit("/", 1)[1]), b"status"
    elif path == "/upload":
        status, body, ctype = 200, json.dumps({"received": received}).encode(), b"application/json"
    elif path == "/echo" and method == "POST":
        status, body, ctype = 200, request_body, request_type
    elif path == "/items" and method == "POST":
        status, body, ctype = 201, json.dumps({"id": 1, "received": received}).encode(), b"application/json"
    elif path.startswith("/items/"):
        item = path.rsplit("/", 1)[1]
        if method == "GET":
            status, body, ctype = 200, json.dumps({"id": item}).encode(), b"application/json"
        elif method == "PUT":
            status, body, ctype = 200, json.dumps({"id": item, "received": received}).encode(), b"application/json"
        elif method == "DELETE":
            status = 204
    elif path == "/stream":
        await stream(send, b"text/plain", [b"chunk %d\n" % i for i in range(STREAM_CHUNKS)])
        return
    elif path == "/events":
        events = [b'data: {"n": %d}\n\n' % i for i in range(EVENTS)]
        await stream(send, b"text/event-stream", events)
        return
    headers = [(b"content-type", ctype)]
    if status in NO_BODY or status < 200:
        body = b""
    else:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def stream(send, ctype, parts):
    """No content-length: the server frames the body with chunked transfer coding."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", ctype), (b"cache-control", b"no-cache")]})
    for part in parts:
        await send({"type": "http.response.body", "body": part, "more_body": True})
        await asyncio.sleep(0.01)
    await send({"type": "http.response.body", "body": b""})
