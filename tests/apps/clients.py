"""Clients for traceo's live tests and golden fixtures, each waiting on stdin where the test
must act in between.

keepalive HOST PORT  one request, print "first", wait for a line, a second request on the
                     same connection, print "second <status>"
fdreuse HOST PORT    wait for a line; twice: connect, GET /hello, read, print "fd <n>", close
syscalls HOST PORT   wait for a line; on one keep-alive connection, three GET /hello requests
                     sent with sendmsg, writev and write (in pieces) and answered through
                     recvmsg, readv and read; prints "done"
httpx HOST PORT      wait for a line; on one keep-alive httpx connection: GET /hello,
                     POST /echo and POST /items with JSON, GET /items/7, PUT /items/7 with
                     JSON, DELETE /items/7, GET /missing; print "<method> <path> <status>"
httpx-tls HOST PORT  the same over HTTPS, certificate checks off (verify=False)
pipeline HOST PORT   wait for a line; send PIPELINE (3 requests) in one send, read the three
                     responses until the server closes, print each status line
timed HOST PORT JSON wait for a line; for each [method, path, body or null] of the JSON list,
                     one request on one keep-alive connection, timed with perf_counter around
                     the whole request; print {"method", "path", "status", "ms"} per request
"""
import os
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


def read_response(receive):
    """Read one small response through `receive` until its body (Content-Length) is complete."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + body_length(data):
        chunk = receive()
        if not chunk:
            break
        data += chunk
    return data


def body_length(data):
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def syscalls(host, port):
    sys.stdin.readline()
    s = socket.create_connection((host, port))
    fd = s.fileno()
    parts = [b"GET /hello HTTP/1.1\r\n", b"Host: sendmsg\r\n", b"\r\n"]
    s.sendmsg(parts)
    read_response(lambda: s.recvmsg(65536)[0])
    os.writev(fd, [b"GET /hello HTTP/1.1\r\n", b"Host: writev\r\n", b"\r\n"])

    def readv():
        buf = bytearray(65536)
        n = os.readv(fd, [buf])
        return bytes(buf[:n])

    read_response(readv)
    for piece in [b"GET /hello HTTP/1.1\r\n", b"Host: write\r\n\r\n"]:
        os.write(fd, piece)
    read_response(lambda: os.read(fd, 65536))
    s.close()
    print("done", flush=True)


def httpx_client(host, port, tls=False):
    import httpx

    sys.stdin.readline()
    scheme = "https" if tls else "http"
    with httpx.Client(base_url=f"{scheme}://{host}:{port}", verify=not tls) as client:
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
        modes = {
            "keepalive": keepalive,
            "fdreuse": fdreuse,
            "syscalls": syscalls,
            "httpx": httpx_client,
            "httpx-tls": lambda host, port: httpx_client(host, port, tls=True),
            "pipeline": pipeline,
        }
        modes[command](host, port)
