"""What the fidelity ASGI apps share: the lifespan protocol, reading the request, and a
plain-text answer. `route(scope)` returns (status, body) or (status, body, after): `after()`
is awaited once the response is sent, in the request's task (as Starlette runs background
tasks)."""


async def serve(scope, receive, send, route, startup=None, shutdown=None):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if startup:
                    await startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if shutdown:
                    await shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    status, body, *after = await route(scope)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
    for work in after:
        await work()
