"""The fidelity front as an MCP server (official SDK, streamable HTTP at /mcp): the tool
call(req) sleeps 0-20 ms, calls FIDELITY_BACKEND/leaf?from=REQ&k=0 with one shared
httpx.AsyncClient, sleeps 0-10 ms and returns the backend's answer.
Run: python front_mcp.py PORT."""
import asyncio
import logging
import os
import random
import sys

import httpx
import uvicorn
from mcp.server.mcpserver import MCPServer

BACKEND = os.environ["FIDELITY_BACKEND"]
mcp = MCPServer("fidelity-mcp")
logging.getLogger("httpx").setLevel(logging.WARNING)
state = {}


@mcp.tool()
async def call(req: str) -> str:
    """Call the backend for request REQ."""
    if "client" not in state:
        state["client"] = httpx.AsyncClient(timeout=30)
    await asyncio.sleep(random.uniform(0, 0.020))
    r = await state["client"].get(f"{BACKEND}/leaf", params={"from": req, "k": "0"})
    r.raise_for_status()
    await asyncio.sleep(random.uniform(0, 0.010))
    return r.text


if __name__ == "__main__":
    uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
