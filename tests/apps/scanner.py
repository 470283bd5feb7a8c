"""A path scanner: N requests with random paths (and random methods), over a few keep-alive
connections. Usage: scanner.py HOST PORT N SEED [--methods]. Prints how many got each status."""
import http.client
import random
import string
import sys
import collections

host, port, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] if "--methods" in sys.argv else ["GET"]
rng = random.Random(seed)
statuses = collections.Counter()
conn = http.client.HTTPConnection(host, port, timeout=10)
for i in range(n):
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(rng.randint(1, 3))]
    path = "/" + "/".join(words) + rng.choice(["", ".php", ".bak", "/.env", ".git/config"])
    try:
        conn.request(rng.choice(methods), path)
        r = conn.getresponse()
        r.read()
        statuses[r.status] += 1
    except (http.client.HTTPException, OSError):
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        statuses["error"] += 1
print(dict(statuses))
