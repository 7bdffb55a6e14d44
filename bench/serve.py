#!/usr/bin/env python3
"""Serve DIR on 127.0.0.1:PORT with sendfile(2), so that the server is never the bottleneck.

Usage: serve.py DIR PORT
"""
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source, outputfile):
        self.connection.sendfile(source)

    def log_message(self, *args):
        pass


os.chdir(sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
