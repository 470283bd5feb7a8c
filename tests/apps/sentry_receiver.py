"""A Sentry ingest stand-in: answers 200 to POST /api/<project>/envelope/ and prints, per
error event, one JSON line {"path": request path, "event_id": id, "canary": its tag} (the test's ground truth).
Usage: sentry_receiver.py PORT"""

import gzip
import http.server
import json
import sys
from urllib.parse import urlsplit


def events(body):
    """Error events of an envelope: (header line, then item header + payload pairs)."""
    lines = body.split(b"\n")
    i = 1
    while i + 1 < len(lines):
        item = json.loads(lines[i]) if lines[i].strip() else {}
        if "length" in item:
            start = sum(len(l) + 1 for l in lines[: i + 1])
            payload = body[start : start + item["length"]]
            i += 1 + payload.count(b"\n") + 1
        else:
            payload = lines[i + 1]
            i += 2
        if item.get("type") == "event":
            yield json.loads(payload)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path.startswith("/api/") and self.path.rstrip("/").endswith("/envelope"):
            for ev in events(body):
                path = urlsplit(ev.get("request", {}).get("url", "")).path
                canary = ev.get("tags", {}).get("canary")
                print(json.dumps({"path": path, "event_id": ev["event_id"], "canary": canary}), flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
