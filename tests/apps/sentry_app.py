"""The Sentry test's app: FastAPI reporting its exceptions with the real sentry-sdk to the
test's receiver (SENTRY_DSN). /fail/{n} raises; /ok/{n} answers."""

import asyncio
import os

import sentry_sdk

sentry_sdk.init(dsn=os.environ["SENTRY_DSN"])

from fastapi import FastAPI  # noqa: E402 (after init, as Sentry's docs do)

app = FastAPI()


@app.get("/ok/{n}")
async def ok(n: int):
    await asyncio.sleep(0.02)
    return {"n": n}


@app.get("/fail/{n}")
async def fail(n: int):
    # Only Sentry gets this: the test checks it never leaves the agent.
    sentry_sdk.set_tag("canary", "sentry-canary-7f3a")
    await asyncio.sleep(0.02)
    raise ValueError(f"boom {n}")
