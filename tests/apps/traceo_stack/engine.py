"""A small Traceo engine, faithful to the seed card: CSV upload -> job -> webhook.

POST /api/v1/jobs          multipart CSV upload (field "file") -> 202 {"job_id": ...}
GET  /api/v1/jobs/{job_id} -> the job
GET  /health, /ready       liveness and readiness
GET  /metrics              the seed's whole surface: uptime gauge and jobs by status

A background task parses the CSV (every row must have as many fields as the header, and there
must be at least one data row) and, when the job ends, POSTs {"job_id", "status", ...} to the
webhook at TRACEO_WEBHOOK_URL. Like the seed's engine, it logs with the stdlib logger
(default format, stderr) and no correlation id: a failed ingest leaves its lines and the
parser's traceback. Run: uvicorn engine:app --port N
"""
import asyncio
import csv
import io
import logging
import os
import time
import uuid

import httpx
from fastapi import BackgroundTasks, FastAPI, HTTPException, UploadFile
from fastapi.responses import PlainTextResponse

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("engine.jobs")

app = FastAPI(title="traceo-engine")
JOBS: dict[str, dict] = {}
STARTED = time.time()
WEBHOOK_URL = os.environ.get("TRACEO_WEBHOOK_URL", "http://127.0.0.1:8001/webhooks/job-complete")


def parse_csv(data: bytes) -> int:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    if len(rows) < 2:
        raise ValueError("no data rows")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise ValueError(f"line {number}: {len(row)} fields, expected {width}")
    return len(rows) - 1


async def process(job_id: str, data: bytes) -> None:
    job = JOBS[job_id]
    job["status"] = "running"
    await asyncio.sleep(0.05)
    log.info("ingest %s: parsing %d bytes", job_id, len(data))
    try:
        job["rows"] = parse_csv(data)
        job["status"] = "completed"
        log.info("ingest %s: %d rows loaded", job_id, job["rows"])
    except (ValueError, UnicodeDecodeError) as e:
        job["status"] = "failed"
        job["error"] = str(e)
        log.exception("ingest %s failed", job_id)
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(WEBHOOK_URL, json={"job_id": job_id, **job})


@app.post("/api/v1/jobs", status_code=202)
async def create_job(file: UploadFile, background: BackgroundTasks) -> dict:
    data = await file.read()
    job_id = uuid.uuid4().hex
    JOBS[job_id] = {"status": "pending", "filename": file.filename, "bytes": len(data)}
    log.info("upload %s accepted as job %s", file.filename, job_id)
    background.add_task(process, job_id, data)
    return {"job_id": job_id}


@app.get("/api/v1/jobs/{job_id}")
async def get_job(job_id: str) -> dict:
    if job_id not in JOBS:
        raise HTTPException(status_code=404, detail="no such job")
    return {"job_id": job_id, **JOBS[job_id]}


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.get("/ready")
async def ready() -> dict:
    return {"status": "ready"}


@app.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> str:
    lines = [
        "# TYPE traceo_engine_uptime_seconds gauge",
        f"traceo_engine_uptime_seconds {time.time() - STARTED:.3f}",
        "# TYPE traceo_jobs_total gauge",
    ]
    for status in ("pending", "running", "completed", "failed"):
        count = sum(1 for j in JOBS.values() if j["status"] == status)
        lines.append(f'traceo_jobs_total{{status="{status}"}} {count}')
    return "\n".join(lines) + "\n"
