"""An HTTP/1.1 server on raw sockets that never loads Python's ssl module, so its process maps
no libssl: traceo's "traced process without a TLS library" case.

plain_socket_server.py PORT   answer every request on 127.0.0.1:PORT with 200 "plain"
"""
import socket
import sys

assert "ssl" not in sys.modules


def serve(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    while True:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
