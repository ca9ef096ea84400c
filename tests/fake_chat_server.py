"""A fake OpenAI-compatible chat server on 127.0.0.1 (threaded `http.server`) for the endpoint client tests: each
request is answered by `behaviour(server, n, body)` -> (status, payload) or (status, payload, headers), where
payload is a dict (sent as JSON) or raw bytes (garbage). `chat_reply(text)` is a well-formed chat completion. The
server counts calls, keeps every body and header set, and the most requests it saw in flight at once."""

from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(text: str, finish_reason: str = "stop", completion_tokens: int | None = 3) -> dict:
    out = {"id": "x", "object": "chat.completion", "created": 0, "model": "served",
           "choices": [{"index": 0, "finish_reason": finish_reason,
                        "message": {"role": "assistant", "content": text}}]}
    if completion_tokens is not None:
        out["usage"] = {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens}
    return out


class FakeChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour):
        super().__init__(("127.0.0.1", 0), _Handler)  # port 0: the OS picks a free port
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.bodies: list[dict] = []
        self.headers_seen: list[dict] = []  # lower-cased header names
        self.release = threading.Event()  # set at shutdown so hanging handlers exit

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        pass  # a client that timed out closes its socket; the BrokenPipe is expected, not test noise


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        srv: FakeChatServer = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.calls += 1
            n = srv.calls
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
            srv.bodies.append(body)
            srv.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        try:
            status, payload, *rest = srv.behaviour(srv, n, body)
        finally:
            with srv.lock:
                srv.active -= 1
        headers = rest[0] if rest else {}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def fake_chat_server(behaviour):
    srv = FakeChatServer(behaviour)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def unused_port() -> int:
    """A loopback port that was free a moment ago: nothing listens there (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
