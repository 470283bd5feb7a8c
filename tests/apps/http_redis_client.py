"""Talks HTTP and Redis over and over, each on a fresh connection (so the agent sees each
one start): GET http://127.0.0.1:HTTP_PORT/ and INCR on 127.0.0.1:REDIS_PORT.
Usage: http_redis_client.py HTTP_PORT REDIS_PORT"""

import sys
import time
import urllib.request

import redis

http_port, redis_port = int(sys.argv[1]), int(sys.argv[2])
while True:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=5) as r:
        r.read()
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    client.incr("traceo-check")
    client.close()
    time.sleep(0.1)
