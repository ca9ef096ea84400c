"""`medlvr serve`: an OpenAI-compatible chat server whose answers come from a `DecodeBackend` (MedLVR's latent loop).

Built on Starlette + uvicorn (already in the install through dagster-webserver; FastAPI would add only request-model
sugar on top of Starlette). Routes: `GET /v1/models`, `POST /v1/chat/completions`, `GET /health` (counters).

* Dynamic batching (`Batcher`): requests wait in a bounded queue (`max_queue`; a full queue answers 429 with
  Retry-After); one decode thread takes up to `max_batch` queued requests of the same sampling group at once, so
  requests that arrive while a batch decodes form the next batch. Before it decodes, it waits while requests keep
  arriving (each within `batch_wait_s` of the last, at most 5 x `batch_wait_s`), so clients that send together
  are decoded together.
* Each request has a deadline (`request_timeout_s`, 504 when it passes); a client that disconnects while its
  request is queued is dropped from the queue (never decoded); both are counted in /health. A batch already
  decoding runs to its end (the latent loop has no cancellation point), so shutdown waits for it.
* Errors are OpenAI's JSON shape `{"error": {"message", "type", "param", "code"}}`, the message on one line.
* Graceful shutdown (SIGINT / SIGTERM): uvicorn stops accepting connections and lets the requests in flight finish;
  the decode thread drains the queue, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from medlvr.evaluation.serve_backend import DecodeBackend, Prepared, RequestError, parse_request


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict | None = None) -> JSONResponse:
    one_line = " ".join(str(message).split())
    return JSONResponse({"error": {"message": one_line, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


@dataclass
class _Pending:
    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: bool = False


@dataclass
class ServeStats:
    received: int = 0
    served: int = 0
    rejected: int = 0  # 4xx before decoding (bad input, too long, full queue)
    timed_out: int = 0
    disconnected: int = 0  # clients gone while waiting
    skipped: int = 0  # queued requests never decoded because their client left or timed out
    batches: int = 0
    max_batch_seen: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class Batcher:
    """The bounded queue and the one decode thread (module docstring)."""

    def __init__(self, backend: DecodeBackend, max_batch: int, max_queue: int, batch_wait_s: float,
                 stats: ServeStats):
        self.backend, self.max_batch, self.max_queue, self.batch_wait_s = backend, max_batch, max_queue, batch_wait_s
        self.stats = stats
        self.queue: deque[_Pending] = deque()
        self.cv = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="medlvr-decode", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, prepared: Prepared) -> _Pending:
        loop = asyncio.get_running_loop()
        item = _Pending(prepared, loop, loop.create_future())
        with self.cv:
            if self.closing:
                raise RequestError(503, "the server is shutting down", "server_error", "shutting_down")
            if len(self.queue) >= self.max_queue:
                raise RequestError(429, f"the queue is full ({self.max_queue} requests waiting); retry later",
                                   "rate_limit_error", "queue_full")
            self.queue.append(item)
            self.cv.notify()
        return item

    def close(self) -> None:
        """Stop taking requests, decode what is queued, stop the thread."""
        with self.cv:
            self.closing = True
            self.cv.notify()
        if self.thread.is_alive():
            self.thread.join()

    def _take(self) -> list[_Pending] | None:
        with self.cv:
            while not self.queue and not self.closing:
                self.cv.wait()
            if not self.queue:
                return None  # closing and drained
            # let simultaneous requests join: wait while they keep arriving (each within batch_wait_s of the one
            # before), at most 5 x batch_wait_s in all
            cap = time.monotonic() + 5 * self.batch_wait_s
            while len(self.queue) < self.max_batch and not self.closing:
                n = len(self.queue)
                left = min(self.batch_wait_s, cap - time.monotonic())
                if left <= 0 or (not self.cv.wait(left) and len(self.queue) == n):
                    break
            group = self.queue[0].prepared.group
            batch, keep = [], deque()
            while self.queue:
                item = self.queue.popleft()
                if item.cancelled:
                    self.stats.skipped += 1
                elif item.prepared.group == group and len(batch) < self.max_batch:
                    batch.append(item)
                else:
                    keep.append(item)
            self.queue = keep
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
            self.stats.batch_sizes.append(len(batch))
            try:
                results = self.backend.decode([b.prepared for b in batch])
            except Exception as e:  # noqa: BLE001 - a decode failure fails its batch's requests, not the server
                for b in batch:
                    b.loop.call_soon_threadsafe(_set, b.future, None, e)
                continue
            for b, res in zip(batch, results):
                b.loop.call_soon_threadsafe(_set, b.future, res, None)


def _set(future: asyncio.Future, result, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def build_app(backend: DecodeBackend, *, max_batch: int = 8, max_queue: int = 64, batch_wait_s: float = 0.025,
              request_timeout_s: float = 300.0, allowed_media: Path | None = None) -> Starlette:
    stats = ServeStats()
    batcher = Batcher(backend, max_batch, max_queue, batch_wait_s, stats)
    created = int(time.time())

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": backend.model_id, "object": "model", "created": created, "owned_by": "medlvr"}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "queued": len(batcher.queue), **stats.__dict__})

    async def chat(request: Request) -> JSONResponse:
        stats.received += 1
        try:
            body = await request.json()
        except ValueError:
            stats.rejected += 1
            return error_response(400, "the request body is not valid JSON")
        try:
            req = await asyncio.to_thread(parse_request, body, backend.model_id, backend.max_tokens_limit,
                                          allowed_media)
            prepared = await asyncio.to_thread(backend.prepare, req)
            item = batcher.submit(prepared)
        except RequestError as e:
            stats.rejected += 1
            headers = {"Retry-After": "1"} if e.status == 429 else None
            return error_response(e.status, e.message, e.type, e.code, e.param, headers)
        deadline = time.monotonic() + request_timeout_s
        while not item.future.done():
            left = deadline - time.monotonic()
            if left <= 0:
                item.cancelled = True
                stats.timed_out += 1
                return error_response(504, f"the request did not finish within {request_timeout_s:g} s "
                                           f"(--request-timeout)", "timeout_error", "timeout")
            await asyncio.wait([item.future], timeout=min(0.1, left))
            if not item.future.done() and await request.is_disconnected():
                item.cancelled = True
                stats.disconnected += 1
                return error_response(499, "the client closed the connection", "client_closed", "client_closed")
        try:
            res = item.future.result()
        except Exception as e:  # noqa: BLE001
            return error_response(500, f"decoding failed: {type(e).__name__}: {e}", "server_error", "decode_failed")
        stats.served += 1
        reply = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": backend.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": res.finish_reason}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                      "total_tokens": res.prompt_tokens + res.completion_tokens},
        }
        if res.latent is not None:
            reply["medlvr"] = res.latent
        return JSONResponse(reply)

    async def not_found(request: Request, exc) -> JSONResponse:
        return error_response(404, f"no route {request.method} {request.url.path}", code="not_found")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.close()  # uvicorn has let the requests in flight finish; drain whatever is still queued

    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/health", health)], exception_handlers={404: not_found}, lifespan=lifespan)
    app.state.stats, app.state.batcher = stats, batcher
    return app
