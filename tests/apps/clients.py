"""Clients for traceo's live tests and golden fixtures, each waiting on stdin where the test
must act in between.

keepalive HOST PORT  one request, print "first", wait for a line, a second request on the
                     same connection, print "second <status>"
fdreuse HOST PORT    wait for a line; twice: connect, GET /hello, read, print "fd <n>", close
httpx HOST PORT      wait for a line; on one keep-alive httpx connection: GET /hello,
                     POST /echo and POST /items with JSON, GET /items/7, PUT /items/7 with
                     JSON, DELETE /items/7, GET /missing; print "<method> <path> <status>"
pipeline HOST PORT   wait for a line; send PIPELINE (3 requests) in one send, read the three
                     responses until the server closes, print each status line
timed HOST PORT JSON wait for a line; for each [method, path, body or null] of the JSON list,
                     one request on one keep-alive connection, timed with perf_counter around
                     the whole request; print {"method", "path", "status", "ms"} per request
"""
import http.client
import json
import re
import socket
import sys
import time

# The httpx scenario: (method, path, JSON body or None). httpx 0.27 encodes json= bodies
# with json.dumps defaults (", " and ": " separators).
HTTPX_REQUESTS = [
    ("GET", "/hello", None),
    ("POST", "/echo", {"name": "traceo", "values": [1, 2, 3]}),
    ("POST", "/items", {"title": "first"}),
    ("GET", "/items/7", None),
    ("PUT", "/items/7", {"title": "second"}),
    ("DELETE", "/items/7", None),
    ("GET", "/missing", None),
]

PIPELINE = (
    b"GET /status/201 HTTP/1.1\r\nHost: pipeline\r\n\r\n"
    b"POST /echo HTTP/1.1\r\nHost: pipeline\r\nContent-Type: application/json\r\n"
    b"Content-Length: 19\r\n\r\n{\"pipelined\": true}"
    b"GET /status/404 HTTP/1.1\r\nHost: pipeline\r\nConnection: close\r\n\r\n"
)


def keepalive(host, port):
    conn = http.client.HTTPConnection(host, port)
    conn.request("GET", "/hello")
    conn.getresponse().read()
    print("first", flush=True)
    sys.stdin.readline()
    conn.request("GET", "/status/201")
    resp = conn.getresponse()
    resp.read()
    print("second", resp.status, flush=True)


def fdreuse(host, port):
    sys.stdin.readline()
    for _ in range(2):
        s = socket.create_connection((host, port))
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        print("fd", s.fileno(), flush=True)
        s.close()


def httpx_client(host, port):
    import httpx

    sys.stdin.readline()
    with httpx.Client(base_url=f"http://{host}:{port}") as client:
        for method, path, body in HTTPX_REQUESTS:
            resp = client.request(method, path, json=body)
            print(method, path, resp.status_code, flush=True)


def pipeline(host, port):
    sys.stdin.readline()
    s = socket.create_connection((host, port))
    s.sendall(PIPELINE)
    received = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        received += data
    s.close()
    for status_line in re.findall(rb"HTTP/1\.[01] \d{3} [^\r]*", received):
        print(status_line.decode(), flush=True)


def timed(host, port, spec):
    sys.stdin.readline()
    conn = http.client.HTTPConnection(host, port)
    for method, path, body in json.loads(spec):
        start = time.perf_counter()
        conn.request(method, path, body=None if body is None else body.encode())
        resp = conn.getresponse()
        resp.read()
        ms = (time.perf_counter() - start) * 1000
        print(json.dumps({"method": method, "path": path, "status": resp.status, "ms": ms}), flush=True)


if __name__ == "__main__":
    command, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if command == "timed":
        timed(host, port, sys.argv[4])
    else:
        {"keepalive": keepalive, "fdreuse": fdreuse, "httpx": httpx_client, "pipeline": pipeline}[command](host, port)
