"""Records a real OpenAI-compatible server's replies to the requests the endpoint core's dialects
differ on, into tests/llmlib/cores/dialect_replies/<name>.json (the unit tests' recorded replies).

Usage: python -m tests.servers.record_dialect_replies NAME HOST:PORT "PROMPT TEXT" [MODEL]
Each entry: the request body, the reply's HTTP status and its body bytes exactly as they came (latin-1).
"""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "llmlib" / "cores" / "dialect_replies"
VLLM_FIELDS = {"min_tokens": 1, "stop_token_ids": [2], "return_token_ids": True}


def exchange(address: str, method: str, path: str, body: dict | None = None) -> dict:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    return {"request": body, "status": r.status, "body": raw.decode("latin-1")}


def record(name: str, address: str, text: str, model: str | None = None) -> Path:
    base = {"model": model} if model else {}
    greedy = {**base, "max_tokens": 4, "temperature": 0.0}
    replies = {
        "models": exchange(address, "GET", "/v1/models"),
        "vllm_fields": exchange(address, "POST", "/v1/completions", {**greedy, "prompt": text, **VLLM_FIELDS}),
        "token_ids": exchange(address, "POST", "/v1/completions", {**greedy, "prompt": [1, 5, 6]}),
        "reply": exchange(address, "POST", "/v1/completions", {**greedy, "prompt": text}),
        "stream": exchange(address, "POST", "/v1/completions", {
            **greedy, "prompt": text, "stream": True, "stream_options": {"include_usage": True}}),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(replies, indent=1) + "\n")
    return path


if __name__ == "__main__":
    print(record(*sys.argv[1:]))
