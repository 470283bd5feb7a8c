"""Load for traceo's overload test: THREADS keep-alive connections, each sending REQUESTS
GET /sized/{status}/{bytes} with statuses and sizes chosen at random, so the test can check
every exchange the agent reports against what was asked. Prints one JSON summary line.

Run: python sized_load.py PORT THREADS REQUESTS
"""
import http.client
import json
import random
import sys
import threading

STATUSES = [200, 201, 202, 203, 206, 404, 409, 418, 500, 503]


def worker(port, n, seed, out):
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    done = 0
    for _ in range(n):
        status, size = rng.choice(STATUSES), rng.choice([0, 7, 300, 5000, 40000, 120000])
        conn.request("GET", f"/sized/{status}/{size}")
        r = conn.getresponse()
        body = r.read()
        assert (r.status, len(body)) == (status, size), (r.status, len(body), status, size)
        done += 1
    conn.close()
    out.append(done)


def main():
    port, threads, n = (int(a) for a in sys.argv[1:4])
    done = []
    ts = [threading.Thread(target=worker, args=(port, n, i, done)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps({"requests": sum(done)}), flush=True)


main()
