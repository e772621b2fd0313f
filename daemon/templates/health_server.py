#!/usr/bin/env python3
"""Liveness endpoint of the megaplan cloud runner.

Any GET on 0.0.0.0:$PORT answers 200 `OK - megaplan cloud container alive`. Providers (Railway's
healthcheck, `docker compose ps`, an operator's curl) use it to see that the container is up;
entrypoint.sh waits on this process, so the container lives as long as it does.
"""

import http.server
import os
import sys

BODY = b"OK - megaplan cloud container alive\n"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()

    def log_message(self, format, *args):
        # Health probes every few seconds would drown the entrypoint log.
        pass


def main():
    raw = os.environ.get("PORT", "8080")
    try:
        port = int(raw)
        if not 0 < port < 65536:
            raise ValueError(raw)
    except ValueError:
        print(f"health server: PORT must be a port number, found {raw!r}", file=sys.stderr)
        return 2
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"health server listening on :{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
