"""Mixed load for traceo's soak, for SECONDS against a uvicorn port and a gunicorn port:
- valid requests GET /sized/{status}/{bytes} with statuses and sizes chosen at random, on
  keep-alive connections of random length (THREADS per server);
- garbage: random bytes and malformed heads on both ports, then close;
- half-open connections on the uvicorn port: a head that never ends, or nothing at all,
  held a few seconds and dropped (sometimes with a reset).
Counts what completed per server and status; prints one JSON line at the end.

Run: python soak_load.py UVICORN_PORT GUNICORN_PORT SECONDS THREADS
"""
import http.client
import json
import os
import random
import socket
import struct
import sys
import threading
import time

STATUSES = [200, 201, 202, 203, 206, 404, 409, 418, 500, 503]
SIZES = [0, 7, 300, 5000, 40000]
lock = threading.Lock()
counts = {}


def add(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n


def valid(name, port, deadline, seed):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(rng.randint(1, 20)):
            if time.monotonic() >= deadline:
                break
            status, size = rng.choice(STATUSES), rng.choice(SIZES)
            try:
                conn.request("GET", f"/sized/{status}/{size}")
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException):
                # A recycled worker closed the connection: no response, not counted.
                add(f"{name}.failed")
                break
            if (r.status, len(body)) == (status, size):
                add(f"{name}.completed")
                add(f"{name}.status.{status}")
            else:
                add(f"{name}.wrong")
            if r.will_close:
                break
            time.sleep(rng.random() * 0.02)
        conn.close()


GARBAGE_HEADS = [
    b"GET /\x00\xff HTTP/1.1\r\n\r\n",
    b"HELLO WORLD\r\n\r\n",
    b"GET / HTTP/9.9\r\nContent-Length: -1\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]


def garbage(ports, deadline, seed):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        port = rng.choice(ports)
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            if rng.random() < 0.5:
                s.sendall(os.urandom(rng.randint(1, 3000)))
            else:
                s.sendall(rng.choice(GARBAGE_HEADS))
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
            s.close()
            add("garbage")
        except OSError:
            add("garbage.failed")
        time.sleep(0.05)


def half_open(port, deadline, seed):
    rng = random.Random(seed)
    held = []
    while time.monotonic() < deadline:
        now = time.monotonic()
        while len(held) < 10:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                if rng.random() < 0.7:
                    s.sendall(b"GET /halfopen HTTP/1.1\r\nHost: soak\r\nX-Never: ")
                held.append((now + rng.uniform(1, 8), s))
                add("halfopen")
            except OSError:
                add("halfopen.failed")
                break
        keep = []
        for until, s in held:
            if until > now:
                keep.append((until, s))
                continue
            if rng.random() < 0.3:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        held = keep
        time.sleep(0.2)
    for _, s in held:
        s.close()


def main():
    up, gp, seconds, threads = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    deadline = time.monotonic() + seconds
    ts = []
    for i in range(threads):
        ts.append(threading.Thread(target=valid, args=("uvicorn", up, deadline, i)))
        ts.append(threading.Thread(target=valid, args=("gunicorn", gp, deadline, 1000 + i)))
    ts.append(threading.Thread(target=garbage, args=([up, gp], deadline, 7)))
    ts.append(threading.Thread(target=half_open, args=(up, deadline, 8)))
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps(counts, sort_keys=True), flush=True)


main()
