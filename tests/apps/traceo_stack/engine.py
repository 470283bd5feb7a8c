"""A small Traceo engine, faithful to the seed card: CSV upload -> job -> webhook.

POST /api/v1/jobs          multipart CSV upload (field "file") -> 202 {"job_id": ...}
GET  /api/v1/jobs/{job_id} -> the job
GET  /health, /ready       liveness and readiness
GET  /metrics              the seed's whole surface: uptime gauge and jobs by status

A background task parses the CSV (every row must have as many fields as the header, and there
must be at least one data row) and, when the job ends, POSTs {"job_id", "status", ...} to the
webhook at TRACEO_WEBHOOK_URL. Like the seed's engine, it logs with the stdlib logger
(default format, stderr) and no correlation id: a failed ingest leaves its lines and the
parser's traceback. With TRACEO_DATABASE_URL (postgresql://...) it also writes the seed's
audit rows, one per mutation (job created, job completed or failed), to `audit_logs` through
an asyncpg pool; the rows carry the job id, nothing ties them to the request.
Run: uvicorn engine:app --port N
"""
import asyncio
import csv
import io
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager

import httpx
from fastapi import BackgroundTasks, FastAPI, HTTPException, UploadFile
from fastapi.responses import PlainTextResponse

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("engine.jobs")

DATABASE_URL = os.environ.get("TRACEO_DATABASE_URL")
DB: dict = {}


@asynccontextmanager
async def lifespan(_app):
    if DATABASE_URL:
        import asyncpg

        DB["pool"] = await asyncpg.create_pool(DATABASE_URL, min_size=2, max_size=4)
        await DB["pool"].execute(
            "CREATE TABLE IF NOT EXISTS audit_logs (id serial PRIMARY KEY, job_id text NOT NULL, "
            "action text NOT NULL, detail text, at timestamptz NOT NULL DEFAULT now())"
        )
    yield
    if "pool" in DB:
        await DB["pool"].close()


async def audit(job_id: str, action: str, detail: str) -> None:
    if "pool" in DB:
        await DB["pool"].execute(
            "INSERT INTO audit_logs (job_id, action, detail) VALUES ($1, $2, $3)", job_id, action, detail
        )


app = FastAPI(title="traceo-engine", lifespan=lifespan)
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
    await audit(job_id, f"job.{job['status']}", job.get("error", f"{job.get('rows')} rows"))
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(WEBHOOK_URL, json={"job_id": job_id, **job})


@app.post("/api/v1/jobs", status_code=202)
async def create_job(file: UploadFile, background: BackgroundTasks) -> dict:
    data = await file.read()
    job_id = uuid.uuid4().hex
    JOBS[job_id] = {"status": "pending", "filename": file.filename, "bytes": len(data)}
    log.info("upload %s accepted as job %s", file.filename, job_id)
    await audit(job_id, "job.created", file.filename or "")
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
