#!/usr/bin/env python3
"""The harness's loopback HTTP server: what the guest fetches, and a private store.

serve.py DIR PORT [--token-file F] [--rate BYTES_PER_S]

- Files below DIR, GET and HEAD, with single Range requests (206 + Content-Range) as olboot's
  resume uses them.
- Below /store/ (the private store) a request must carry the header line of the token file
  (`Authorization: Bearer ...`), else 401; the log records whether it came with the token,
  never the token itself.
- --rate limits the bytes per second of the /opt archive's body (below /store/, or named
  opt.tar.zst*), so that a download takes long enough to overlap with apt in `test-vm/run
  compare`.
- One log line per request on stdout: `METHOD PATH STATUS BYTES auth=yes|no|-`.
"""
import argparse
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # the access log is ours (below)
        pass

    def log_line(self, status, sent, auth):
        path = urlsplit(self.path).path
        print(f"{self.command} {path} {status} {sent} auth={auth}", flush=True)

    def do_HEAD(self):
        self.serve(body=False)

    def do_GET(self):
        self.serve(body=True)

    def reply(self, status, auth, headers=(), text=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(text)
        self.log_line(status, len(text), auth)

    def serve(self, body):
        path = unquote(urlsplit(self.path).path)
        store = path.startswith("/store/")
        auth = "-"
        if store:
            want = self.server.token
            got = self.headers.get(want[0]) if want else None
            auth = "yes" if got is not None and got.strip() == want[1] else "no"
            if auth != "yes":
                return self.reply(401, auth, [("WWW-Authenticate", 'Bearer realm="olboot-test"')],
                                  b"token required\n")
        # normpath, not realpath: DIR links to the cached archive and repository.
        full = os.path.normpath(os.path.join(self.server.root, path.lstrip("/")))
        if not full.startswith(self.server.root + os.sep) or not os.path.isfile(full):
            return self.reply(404, auth, text=b"not found\n")
        size = os.path.getsize(full)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            try:
                unit, spec = rng.split("=", 1)
                a, b = spec.split("-", 1)
                assert unit.strip() == "bytes" and "," not in spec
                start = int(a) if a else max(0, size - int(b))
                end = min(int(b), size - 1) if a and b else size - 1
            except (ValueError, AssertionError):
                return self.reply(400, auth, text=b"bad range\n")
            if start >= size or start > end:
                return self.reply(416, auth, [("Content-Range", f"bytes */{size}")])
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(os.path.getmtime(full)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if body:
            rate = self.server.rate if store or "/opt.tar.zst" in path else 0
            t0 = time.monotonic()
            with open(full, "rb") as f:
                f.seek(start)
                left = end - start + 1
                try:
                    while left > 0:
                        chunk = f.read(min(CHUNK, left))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        left -= len(chunk)
                        if rate:
                            ahead = sent / rate - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError):
                    pass
        self.log_line(status, sent, auth)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("port", type=int)
    ap.add_argument("--token-file")
    ap.add_argument("--rate", type=int, default=0)
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.root = os.path.abspath(a.dir)
    srv.rate = a.rate
    srv.token = None
    if a.token_file:
        line = open(a.token_file).read().strip()
        name, value = ("Authorization", line) if ":" not in line.split(" ")[0] \
            else (lambda n, v: (n.strip(), v.strip()))(*line.split(":", 1))
        srv.token = (name, value)
    print(f"serving {srv.root} on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
