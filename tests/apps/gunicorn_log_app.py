"""A WSGI app for gunicorn that logs while it serves (tests/logs.rs). Run under gunicorn with
`--access-logfile -`: gunicorn writes each request's access line after the response, from
the thread that answered it. Every handler record names its request id (`[rid:N]`)."""

import logging
import random
import time
from urllib.parse import parse_qs

logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
log = logging.getLogger("wsgi.orders")


def app(environ, start_response):
    rid = parse_qs(environ.get("QUERY_STRING", "")).get("rid", ["?"])[0]
    log.info("handling [rid:%s]", rid)
    time.sleep(random.uniform(0.005, 0.03))
    body = rid.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
