"""OpenAI-compatible chat endpoint backend (e.g. a vLLM server): standard library HTTP only.

* Image as a base64 PNG data URL in an `image_url` content part, then the prompt text.
* At most `concurrency` requests in flight across ALL callers of this backend (a semaphore, not only the
  thread pool of one `generate` call, so several corpus workers sharing a backend cannot overrun the server).
* `timeout_s` is an overall deadline per attempt (connect, send, headers and the whole body): a watchdog shuts the
  socket down when it passes, so a server trickling one byte at a time cannot hold an attempt open (a socket
  timeout alone bounds each read, not the reply).
* Retries with exponential backoff on 5xx, 408, 429, timeouts, connection errors and malformed 200 replies;
  other 4xx are our fault (bad model name, too long prompt) and are not retried. None when exhausted.
* The box is rendered as Qwen2.5-VL absolute pixels of the server-side resize (`min_pixels`/`max_pixels`,
  Qwen2.5-VL's released defaults unless configured).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from medlvr.corpus.qa.requests import GeneratorConfig, GenRequest, render_prompt
from medlvr.corpus.qwen.format import QWEN25_MAX_PIXELS, QWEN25_MIN_PIXELS, model_box, png_size

log = logging.getLogger(__name__)

_RETRYABLE_4XX = (408, 429)  # request timeout / rate limit: transient by definition


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


class OpenAIBackend:
    def __init__(self, cfg: GeneratorConfig):
        if not cfg.base_url or not cfg.model:
            raise ValueError("openai backend needs base_url (e.g. http://host:8000/v1) and model")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.model_id = f"openai:{cfg.model}"
        self.cache_params = f"max_new_tokens={cfg.max_new_tokens};temperature={cfg.temperature}"
        self._min_pixels = cfg.min_pixels or QWEN25_MIN_PIXELS
        self._max_pixels = cfg.max_pixels or QWEN25_MAX_PIXELS
        self._slots = threading.BoundedSemaphore(cfg.concurrency)
        self._lock = threading.Lock()
        self.stats = {"attempts": 0, "retries": 0, "failures": 0, "successes": 0}

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    # -----------------------------------------------------------------------------------------------------------

    def request_body(self, req: GenRequest) -> dict:
        content: list[dict] = []
        box_px = None
        if req.image_png is not None:
            url = "data:image/png;base64," + base64.b64encode(req.image_png).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
            if req.box is not None:
                box_px = model_box(req.box, png_size(req.image_png), self._min_pixels, self._max_pixels)
        content.append({"type": "text", "text": render_prompt(req, box_px)})
        messages = [{"role": "user", "content": content}]
        if self.cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": self.cfg.max_new_tokens,
            "temperature": self.cfg.temperature,
        }

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """One POST within `timeout_s` overall; returns (status, body). Raises TimeoutError past the deadline."""
        url = urllib.parse.urlsplit(self.url)
        conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(url.hostname, url.port, timeout=self.cfg.timeout_s)
        expired = threading.Event()

        def expire() -> None:  # runs on the watchdog thread: unblocks whatever read or write is in progress
            expired.set()
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

        watchdog = threading.Timer(self.cfg.timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            path = url.path + (f"?{url.query}" if url.query else "")
            conn.request("POST", path, body=body, headers=self._headers())
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise TimeoutError(f"deadline: no complete reply within timeout_s={self.cfg.timeout_s:g}s") from e
            raise
        finally:
            watchdog.cancel()
            conn.close()

    def _attempt(self, body: bytes) -> str:
        """One HTTP round trip; raises _Retryable or _Fatal, returns the message text."""
        try:
            with self._slots:  # held only while the request is in flight, never during a backoff sleep
                self._count("attempts")
                status, raw = self._post(body)
        except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as e:
            # refused connections, connect/read timeouts, the overall deadline, a server that hung up
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        if not 200 <= status < 300:
            detail = raw[:300].decode("utf-8", "replace")
            if status >= 500 or status in _RETRYABLE_4XX:
                raise _Retryable(f"HTTP {status}: {detail}")
            raise _Fatal(f"HTTP {status}: {detail}")
        try:
            payload = json.loads(raw)
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed response: {raw[:200]!r}") from e
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _Retryable(f"response content is not text: {content!r:.200}")
        return content.strip()

    def _one(self, req: GenRequest) -> str | None:
        try:
            body = json.dumps(self.request_body(req)).encode("utf-8")
        except Exception as e:  # noqa: BLE001 - e.g. undecodable image bytes: fail this request, not the batch
            log.warning("cannot build request: %s: %s", type(e).__name__, e)
            self._count("failures")
            return None
        for attempt in range(self.cfg.max_retries + 1):
            try:
                text = self._attempt(body)
                self._count("successes")
                return text
            except _Fatal as e:
                log.warning("openai request failed, not retried: %s", e)
                break
            except _Retryable as e:
                if attempt == self.cfg.max_retries:
                    log.warning("openai request failed after %d attempts: %s", attempt + 1, e)
                    break
                self._count("retries")
                # exponential backoff, capped; no jitter so runs (and tests) are reproducible
                time.sleep(min(self.cfg.backoff_s * (2 ** attempt), self.cfg.backoff_max_s))
        self._count("failures")
        return None

    def generate(self, reqs: list[GenRequest]) -> list[str | None]:
        if not reqs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(reqs)),
                                thread_name_prefix="openai-gen") as pool:
            return list(pool.map(self._one, reqs))
