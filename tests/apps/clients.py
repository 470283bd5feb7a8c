"""Clients for traceo's live tests, each waiting on stdin where the test must act in between.

keepalive HOST PORT  one request, print "first", wait for a line, a second request on the
                     same connection, print "second <status>"
fdreuse HOST PORT    wait for a line; twice: connect, GET /hello, read, print "fd <n>", close
"""
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


if __name__ == "__main__":
    {"keepalive": keepalive, "fdreuse": fdreuse}[sys.argv[1]](sys.argv[2], int(sys.argv[3]))
