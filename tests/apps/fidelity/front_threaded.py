"""The fidelity front, threaded (the control): http.server.ThreadingHTTPServer, HTTP/1.1
keep-alive, a thread per connection, each thread calling the backend with its own
requests.Session. GET /call?req=ID as in front_asgi.py, with time.sleep.
Run: python front_threaded.py PORT (FIDELITY_BACKEND names the backend).
With FIDELITY_LOGS=1 (the log-correlation scenario): the handler logs a record before its call
and one after (`fidelity req=ID where=...`, stdlib logging to stderr)."""
import logging
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import requests

BACKEND = os.environ["FIDELITY_BACKEND"]
LOGS = os.environ.get("FIDELITY_LOGS") == "1"
local = threading.local()
log = logging.getLogger("fidelity")
if LOGS:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default 5 drops SYNs when 50 clients connect at once


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path != "/call":
            return self.answer(404, b"not found")
        req = parse_qs(url.query).get("req", [""])[0]
        if not hasattr(local, "session"):
            local.session = requests.Session()
        time.sleep(random.uniform(0, 0.020))
        if LOGS:
            log.info("fidelity req=%s where=handler", req)
        local.session.get(f"{BACKEND}/leaf", params={"from": req, "k": "0"}, timeout=30).raise_for_status()
        if LOGS:
            log.warning("fidelity req=%s where=after-call", req)
        time.sleep(random.uniform(0, 0.010))
        self.answer(200, f"called {req}".encode())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
