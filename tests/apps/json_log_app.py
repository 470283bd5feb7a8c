"""A FastAPI app that logs JSON lines (one object per record, as structlog or
python-json-logger setups do) from its handlers (tests/logs.rs). Each record carries the
request id in a field of its own (`rid`) and in its message (`[rid:N]`), plus other fields
(`order_id`, `items`) the agent must keep. `/sync` is a sync handler, which FastAPI runs on
its thread pool."""

import asyncio
import json
import logging
import random
import sys
import time

from fastapi import FastAPI


class JsonFormatter(logging.Formatter):
    def format(self, record):
        doc = {"ts": record.created, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        doc.update(getattr(record, "fields", {}))
        return json.dumps(doc)


handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(JsonFormatter())
log = logging.getLogger("shop.json")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False

app = FastAPI()


@app.get("/order")
async def order(rid: str):
    log.info("order placed [rid:%s]", rid, extra={"fields": {"rid": rid, "order_id": f"o-{rid}", "items": 3}})
    await asyncio.sleep(random.uniform(0.01, 0.05))
    log.warning("order slow [rid:%s]", rid, extra={"fields": {"rid": rid, "order_id": f"o-{rid}", "items": 3}})
    return {"rid": rid}


@app.get("/sync")
def sync(rid: str):
    log.info("sync handler [rid:%s]", rid, extra={"fields": {"rid": rid}})
    time.sleep(random.uniform(0.01, 0.03))
    return {"rid": rid}
