"""A small Traceo MCP server on the official MCP Python SDK (streamable HTTP at /mcp).

Tools: upload_csv(filename, content) uploads to the engine with httpx and returns its job_id;
job_status(job_id) answers from the webhook the engine sent, else asks the engine.
Routes: POST /webhooks/job-complete (the engine's callback), GET /health.
Run: python mcp_server.py PORT (TRACEO_ENGINE_URL names the engine).
"""
import os
import sys

import httpx
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse

ENGINE_URL = os.environ.get("TRACEO_ENGINE_URL", "http://127.0.0.1:8000")
WEBHOOKS: dict[str, dict] = {}

mcp = MCPServer("traceo-mcp")


@mcp.tool()
async def upload_csv(filename: str, content: str) -> dict:
    """Upload a CSV file to the engine; returns the job id."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{ENGINE_URL}/api/v1/jobs", files={"file": (filename, content.encode(), "text/csv")}
        )
        response.raise_for_status()
        return response.json()


@mcp.tool()
async def job_status(job_id: str) -> dict:
    """The status of a job: from the engine's webhook once it came, else from the engine."""
    if job_id in WEBHOOKS:
        return {**WEBHOOKS[job_id], "source": "webhook"}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{ENGINE_URL}/api/v1/jobs/{job_id}")
        response.raise_for_status()
        return {**response.json(), "source": "engine"}


@mcp.custom_route("/webhooks/job-complete", methods=["POST"])
async def job_complete(request: Request) -> JSONResponse:
    payload = await request.json()
    WEBHOOKS[payload["job_id"]] = payload
    return JSONResponse({"received": payload["job_id"]})


@mcp.custom_route("/health", methods=["GET"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


if __name__ == "__main__":
    uvicorn.run(mcp.streamable_http_app(), host=os.environ.get("TRACEO_MCP_HOST", "127.0.0.1"), port=int(sys.argv[1]), log_level="warning")
