"""Process churn for traceo's soak: a traced service that starts short-lived children in a
loop (/bin/true, and a forked child that exits at once), and calls a traced server now and
then, so its own client exchanges can be counted. Waits for a line on stdin, runs SECONDS,
then prints one JSON line.

Run: python churn.py PORT SECONDS
"""
import http.client
import json
import os
import subprocess
import sys
import time


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    sys.stdin.readline()
    deadline = time.monotonic() + seconds
    children = requests = failed = 0
    next_call = time.monotonic()
    while time.monotonic() < deadline:
        subprocess.run(["/bin/true"], check=True)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        children += 2
        if time.monotonic() >= next_call:
            next_call += 0.5
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/sized/200/10")
                r = conn.getresponse()
                if (r.status, len(r.read())) == (200, 10):
                    requests += 1
                else:
                    failed += 1
                conn.close()
            except OSError:
                failed += 1
        time.sleep(0.02)
    print(json.dumps({"children": children, "requests": requests, "failed": failed}), flush=True)


main()
