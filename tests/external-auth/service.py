#!/usr/bin/env python3
"""A token validation service that follows the external validation contract,
for Berth's tests: `GET /api/auth/info` with `Authorization: Bearer TOKEN`
answers 200 with `{"user": {...}, "authProvider": ...}` for a known token and
401 otherwise.

    service.py [--port N] TOKENS.json

TOKENS.json maps a token to the user object to return, for example
    {"tok-bob": {"id": "1001", "username": "bob", "email": "bob@example.com",
                 "groups": ["dev"]}}
Two tokens behave specially: "slow" answers after 30 s (a timeout) and
"broken" answers 500. The file is read again on every request, so a test can
revoke a token by rewriting it. `GET /stats` returns how many validation
requests arrived. Prints `listening on http://127.0.0.1:PORT` when ready.
Binds to 127.0.0.1 only.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNT = 0
LOCK = threading.Lock()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("tokens")
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            sys.stderr.write("external-auth: " + (fmt % a) + "\n")

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            global COUNT
            if self.path == "/stats":
                with LOCK:
                    return self.answer(200, {"requests": COUNT})
            if self.path != "/api/auth/info":
                return self.answer(404, {"error": "not found"})
            with LOCK:
                COUNT += 1
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return self.answer(401, {"error": "no bearer token"})
            token = auth[len("Bearer "):]
            if token == "slow":
                time.sleep(30)
                return self.answer(401, {"error": "too late"})
            if token == "broken":
                return self.answer(500, {"error": "internal"})
            with open(args.tokens, encoding="utf-8") as f:
                users = json.load(f)
            user = users.get(token)
            if user is None:
                return self.answer(401, {"error": "invalid token"})
            return self.answer(200, {"user": user, "authProvider": "test-idp"})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
