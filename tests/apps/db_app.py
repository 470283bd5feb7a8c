"""A FastAPI app for traceo's database-span test: asyncpg (pooled) and redis-py's asyncio
client. PG_DSN and REDIS_PORT come from the environment.

GET /work?i=N  runs, in the request's own task:
  1. SELECT count(*) FROM items WHERE tag = $1   (asyncpg caches it: a named prepared
     statement, parsed once per connection and executed by every request)
  2. INSERT INTO items (tag, n) VALUES ($1, $2)  with tag "t{N % 25}": `tag` is unique, so
     two requests share each tag and the later one fails with SQLSTATE 23505
  3. INCR (redis-py sends INCRBY) and GET on its own Redis connection (a single-connection client per request)
and answers JSON: for each statement, the local port of the pool connection it ran on and
its position among the statements on that connection (the event loop is single-threaded,
so the counter is exact), whether the INSERT hit the unique violation, and the local port
of its Redis connection. The request id is only in the HTTP request, never in SQL text or
Redis keys.
"""
import asyncio
import os

import asyncpg
import redis.asyncio as aioredis
from fastapi import FastAPI

app = FastAPI()
state = {"per_port": {}}


@app.on_event("startup")
async def startup():
    c = await asyncpg.connect(os.environ["PG_DSN"])
    await c.execute("CREATE TABLE IF NOT EXISTS items (tag text UNIQUE, n integer)")
    await c.close()
    state["lock"] = asyncio.Lock()


async def pool():
    # Opened by the first request, once the agent traces the app (it is selected by the
    # port it listens on), so the agent sees each connection's startup (user, database).
    async with state["lock"]:
        if "pool" not in state:
            state["pool"] = await asyncpg.create_pool(os.environ["PG_DSN"], min_size=8, max_size=8)
    return state["pool"]


def count_on(conn):
    port = conn._transport.get_extra_info("sockname")[1]
    n = state["per_port"].get(port, 0)
    state["per_port"][port] = n + 1
    return {"port": port, "seq": n}


@app.get("/work")
async def work(i: int):
    out = {"i": i, "statements": [], "unique_violation": False}
    async with (await pool()).acquire() as conn:
        out["statements"].append(count_on(conn))
        await conn.fetchval("SELECT count(*) FROM items WHERE tag = $1", f"t{i % 25}")
        out["statements"].append(count_on(conn))
        try:
            await conn.execute("INSERT INTO items (tag, n) VALUES ($1, $2)", f"t{i % 25}", i)
        except asyncpg.UniqueViolationError:
            out["unique_violation"] = True
    r = aioredis.Redis(port=int(os.environ["REDIS_PORT"]), single_connection_client=True)
    try:
        await r.incr(f"hits:{i % 7}")
        await r.get(f"hits:{i % 7}")
        out["redis_port"] = r.connection._writer.get_extra_info("sockname")[1]
    finally:
        await r.aclose()
    return out
