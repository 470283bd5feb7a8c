"""Database clients for traceo's golden fixtures (tests/fixtures/record.sh). Each waits for a
line on stdin first, so the agent can select it by pid before it connects; then it prints what
it got, one line per step.

postgres DSN               asyncpg, one connection: see POSTGRES below
redis HOST PORT PASSWORD   redis-py (sync, RESP2): see redis_client below

Every value the scenarios send is marked `secret` (SECRETS): the golden test checks that the
raw bytes carry them and the agent's output never does.
"""
import asyncio
import sys

# Values sent to the servers; none may appear in what the agent reports.
SECRETS = {
    "insert": ["alice-secret-1", "bob-secret-2"],
    "duplicate": "carol-secret-3",
    "copy": ["dave-secret-4", "erin-secret-5"],
    "redis_value": "redis-secret-value",
    "redis_message": "pubsub-secret-message",
}

CREATE = "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, balance numeric)"
# Literal values in a simple query: the agent must replace each by ?.
INSERT = (
    f"INSERT INTO accounts (id, name, balance) VALUES "
    f"(1, '{SECRETS['insert'][0]}', 100.5), (2, '{SECRETS['insert'][1]}', 7)"
)
SELECT = "SELECT name FROM accounts WHERE id = $1"
DUPLICATE = "INSERT INTO accounts (id, name, balance) VALUES ($1, $2, $3)"


async def postgres(dsn):
    import asyncpg

    sys.stdin.readline()
    conn = await asyncpg.connect(dsn)
    # Without arguments asyncpg's execute() uses the simple query protocol.
    await conn.execute(CREATE)
    print(await conn.execute(INSERT), flush=True)
    # With an argument, the extended protocol: asyncpg prepares the statement once (a named
    # statement, cached) and then only binds and executes it.
    for i in (1, 2, 1):
        print("select", i, len(await conn.fetchval(SELECT, i)), flush=True)
    try:
        await conn.execute(DUPLICATE, 1, SECRETS["duplicate"], 3)
        raise SystemExit("the duplicate INSERT succeeded")
    except asyncpg.UniqueViolationError as e:
        print("duplicate", e.sqlstate, flush=True)
    # COPY ... FROM STDIN in binary: the rows travel as CopyData messages.
    copied = await conn.copy_records_to_table(
        "accounts", records=[(3, SECRETS["copy"][0], 1), (4, SECRETS["copy"][1], 2)]
    )
    print(copied, flush=True)
    await conn.close()


def redis_client(host, port, password):
    import redis

    sys.stdin.readline()
    r = redis.Redis(host=host, port=port, password=password)
    print("set", r.set("greeting", SECRETS["redis_value"]), flush=True)
    print("get", len(r.get("greeting")), flush=True)
    # Three commands in one write, three replies in order.
    pipe = r.pipeline(transaction=False)
    pipe.incr("counter")
    pipe.incrby("counter", 5)
    pipe.exists("greeting")
    print("pipeline", pipe.execute(), flush=True)
    for command in (lambda: r.incr("greeting"), lambda: r.lpush("greeting", "x")):
        try:
            command()
            raise SystemExit("no error reply")
        except redis.ResponseError as e:
            print("error", e, flush=True)
    # A subscriber (its own connection): from SUBSCRIBE on, its traffic is not paired.
    sub = r.pubsub()
    sub.subscribe("news")
    print("subscribed", sub.get_message(timeout=2)["type"], flush=True)
    print("published", r.publish("news", SECRETS["redis_message"]), flush=True)
    print("received", sub.get_message(timeout=2)["type"], flush=True)
    sub.close()
    r.close()


if __name__ == "__main__":
    if sys.argv[1] == "postgres":
        asyncio.run(postgres(sys.argv[2]))
    else:
        redis_client(sys.argv[2], int(sys.argv[3]), sys.argv[4])
