"""A WSGI app for traceo's soak (run with gunicorn, workers recycled by --max-requests).

GET /sized/{code}/{n} -> that status with a body of exactly n bytes
anything else         -> 404 "not found"
"""

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
           206: "Partial Content", 404: "Not Found", 409: "Conflict", 418: "I'm a teapot",
           500: "Internal Server Error", 503: "Service Unavailable"}


def app(environ, start_response):
    parts = environ.get("PATH_INFO", "").split("/")
    status, body = 404, b"not found"
    if len(parts) == 4 and parts[1] == "sized" and parts[2].isdigit() and parts[3].isdigit():
        status, body = int(parts[2]), b"x" * int(parts[3])
    start_response(f"{status} {REASONS.get(status, 'Status')}",
                   [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
