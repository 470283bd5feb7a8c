"""The fidelity load: N requests, C in flight, request i carrying the id PREFIX-i.

python load.py http URL_TEMPLATE N C PREFIX   GET URL_TEMPLATE with {id} replaced, one shared
                                              httpx.AsyncClient (keep-alive, C connections)
python load.py mcp MCP_URL N C PREFIX         N MCP client sessions (official SDK), each calling
                                              the tool call(req=ID) once, with the header
                                              X-Fidelity-Req: ID on every request it sends
Prints one JSON line: {"sent", "failed": [ids], "errors": [first messages], "seconds"}.
"""
import asyncio
import json
import sys
import time

import httpx


async def http_one(client, template, rid):
    r = await client.get(template.replace("{id}", rid))
    r.raise_for_status()


async def mcp_one(url, rid):
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(headers={"X-Fidelity-Req": rid}) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("call", {"req": rid})
            if result.is_error:
                raise RuntimeError(f"tool error: {result.content}")


async def main(mode, target, n, c, prefix):
    ids = [f"{prefix}-{i}" for i in range(n)]
    gate = asyncio.Semaphore(c)
    failed, errors = [], []
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(rid):
            async with gate:
                try:
                    if mode == "mcp":
                        await mcp_one(target, rid)
                    else:
                        await http_one(client, target, rid)
                except Exception as e:  # a failed request is reported, not fatal
                    failed.append(rid)
                    if len(errors) < 5:
                        errors.append(f"{rid}: {e!r}")

        start = time.monotonic()
        await asyncio.gather(*(one(rid) for rid in ids))
    print(json.dumps({"sent": n, "failed": failed, "errors": errors, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    mode, target, n, c, prefix = sys.argv[1:6]
    asyncio.run(main(mode, target, int(n), int(c), prefix))
