"""An HTTPS client for traceo's TLS tests: httpx (OpenSSL through Python's ssl module, socket
BIOs), certificate checks off, one keep-alive connection.

https_client.py BASE JSON   wait for a line on stdin; for each [method, path] of the JSON
                            list, one request to BASE + path; print "<method> <path> <status>"
"""
import json
import sys

import httpx


def main():
    base, requests = sys.argv[1], json.loads(sys.argv[2])
    sys.stdin.readline()
    with httpx.Client(base_url=base, verify=False) as client:
        for method, path in requests:
            body = b"x" * 1000 if method in ("POST", "PUT") else None
            r = client.request(method, path, content=body)
            print(f"{method} {path} {r.status_code}", flush=True)


if __name__ == "__main__":
    main()
