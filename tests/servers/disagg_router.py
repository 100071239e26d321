"""Test-side stand-in for `trtllm-serve disaggregated`: reads the disaggregated-serving YAML and, per
completion request, runs the context phase on a context server (the prompt with max_tokens 1) and then
the generation on a generation server, whose reply (streamed or not) it relays.

Run it as the router command the leader starts:
`python -m tests.servers.disagg_router --config {config} --host {host} --port {port}`.
GET /health answers 200, GET /stats the count of requests sent to each pool.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class Router:
    def __init__(self, doc: dict):
        self.ctx = [str(u) for u in doc["context_servers"]["urls"]]
        self.gen = [str(u) for u in doc["generation_servers"]["urls"]]
        self._ctx_next = itertools.cycle(range(len(self.ctx)))
        self._gen_next = itertools.cycle(range(len(self.gen)))
        self.lock = threading.Lock()
        self.stats = {"ctx": 0, "gen": 0}

    def pick(self, pool: str) -> str:
        with self.lock:
            self.stats[pool] += 1
            return self.ctx[next(self._ctx_next)] if pool == "ctx" else self.gen[next(self._gen_next)]


def _connect(url: str) -> http.client.HTTPConnection:
    host, _, port = url.rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=300)


def make_handler(router: Router):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args) -> None:  # quiet
            pass

        def _json(self, status: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                return self._json(200, {"status": "ok"})
            if self.path == "/stats":
                with router.lock:
                    return self._json(200, dict(router.stats))
            if self.path == "/v1/models":
                conn = _connect(router.gen[0])
                conn.request("GET", "/v1/models")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                return self._json(resp.status, json.loads(body or b"{}"))
            return self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            try:
                req = json.loads(body)
            except ValueError:
                return self._json(400, {"error": {"message": "body is not JSON"}})
            # context phase: the prompt, one token, not streamed
            ctx_req = dict(req, max_tokens=1, stream=False)
            ctx_req.pop("stream_options", None)
            conn = _connect(router.pick("ctx"))
            conn.request("POST", self.path, json.dumps(ctx_req), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            ctx_body = resp.read()
            conn.close()
            if resp.status != 200:
                self.send_response(resp.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(ctx_body)))
                self.end_headers()
                self.wfile.write(ctx_body)
                return
            # generation phase, relayed as it arrives
            conn = _connect(router.pick("gen"))
            conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
            if req.get("stream"):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while True:
                    data = resp.read1(65536)
                    if not data:
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                data = resp.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            conn.close()

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.servers.disagg_router", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    with open(args.config) as fh:
        doc = yaml.safe_load(fh)
    host = "127.0.0.1" if args.host == "localhost" else args.host
    server = ThreadingHTTPServer((host, args.port), make_handler(Router(doc)))
    server.daemon_threads = True
    print(f"router on {host}:{args.port}: ctx {doc['context_servers']['urls']} gen "
          f"{doc['generation_servers']['urls']}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
