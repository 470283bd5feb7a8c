"""Clients for traceo's live tests, each waiting on stdin where the test must act in between.

keepalive HOST PORT  one request, print "first", wait for a line, a second request on the
                     same connection, print "second <status>"
fdreuse HOST PORT    wait for a line; twice: connect, GET /hello, read, print "fd <n>", close
syscalls HOST PORT   wait for a line; on one keep-alive connection, three GET /hello requests
                     sent with sendmsg, writev and write (in pieces) and answered through
                     recvmsg, readv and read; prints "done"
"""
import os
import http.client
import socket
import sys


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


if __name__ == "__main__":
    modes = {"keepalive": keepalive, "fdreuse": fdreuse, "syscalls": syscalls}
    modes[sys.argv[1]](sys.argv[2], int(sys.argv[3]))
