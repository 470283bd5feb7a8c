"""A threaded stdlib HTTP server that logs while it serves (tests/logs.rs): one thread per
request; `log_message` writes the common-log-format access line to stderr."""

import logging
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("threaded")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        rid = parse_qs(urlparse(self.path).query).get("rid", ["?"])[0]
        log.info("handling [rid:%s]", rid)
        time.sleep(0.03)
        log.info("done [rid:%s]", rid)
        body = rid.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
