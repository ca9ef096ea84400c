"""One client for OpenAI-compatible chat endpoints (vLLM, SGLang, hosted APIs), on the `openai` SDK. Both the corpus
QA `openai` backend and evaluation's endpoint models use it, so it lives in the lowest layer.

What it adds to the SDK, and why:
* Retries are ours (the SDK's `max_retries` is 0): its backoff base and cap are constants (0.5 s .. 8 s) and it does
  not retry a 200 reply that is not a chat completion. Retried: connection errors, timeouts, HTTP 408/409/429/5xx
  and malformed 200 replies (not JSON, no choices, content that is not text); other 4xx are the caller's fault
  (bad model name, prompt too long) and fail at once. The wait before retry n (0-based) is `Retry-After` (seconds,
  an HTTP date, or `retry-after-ms`) plus up to 10% jitter when the server sends one, else `backoff_s * 2**n`
  capped at `backoff_max_s` with equal jitter (a uniform draw in [half, all] of it), so many clients that failed
  together do not come back together.
* `timeout_s` is an overall deadline per attempt. The SDK's timeout bounds each socket operation, so a server that
  trickles one byte every 0.3 s would hold an attempt open forever; a watchdog shuts the attempt's socket down
  when the deadline passes (the socket is caught through httpcore's `trace` request extension; keep-alive is off
  so every attempt opens its own connection and the watchdog never cuts a connection another attempt reuses).
* At most `max_concurrency` requests in flight across every caller of one client (a semaphore held only while a
  request is in flight, never during a backoff sleep).
* The API key is read from the environment variable named by `api_key_env` (never from a config file) and never
  appears in a message; without it no Authorization header is sent (a local vLLM needs none).
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx2
import openai

T = TypeVar("T")

RETRY_STATUS = (408, 409, 429)  # request timeout, conflict (lock timeout), rate limit: transient by definition
MAX_RETRY_AFTER_S = 120.0  # a server asking for a longer pause is down for maintenance: give up instead


@dataclass(frozen=True)
class EndpointSettings:
    """Where and how to call an OpenAI-compatible chat endpoint (the `endpoint:` block of an evaluation model)."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1 (the SDK appends /chat/completions)
    model: str  # the served model name
    api_key_env: str | None = "OPENAI_API_KEY"  # name of the env var holding the key (keys never in configs)
    max_concurrency: int = 8  # simultaneous requests
    timeout_s: float = 120.0  # overall deadline per attempt (connect + the whole reply)
    max_retries: int = 3  # retries after the first attempt (at most 1 + max_retries attempts)
    backoff_s: float = 1.0  # first retry waits about this long (without Retry-After), then doubles
    backoff_max_s: float = 30.0
    temperature: float = 0.0

    def __post_init__(self):
        if not self.base_url or not self.model:
            raise ValueError("endpoint needs base_url (e.g. http://host:8000/v1) and model (the served name)")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("endpoint: max_concurrency >= 1, max_retries >= 0, timeout_s > 0 and backoff_s >= 0 "
                             "required")


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str  # "stop" | "length" | whatever the server says; "" when it says nothing
    completion_tokens: int | None  # the server's usage count, when it reports one
    attempts: int
    latency_s: float = 0.0  # wall time of the request, retries and their waits included
    medlvr: dict | None = None  # the reply's `medlvr` field (`medlvr serve`: K, latent count), None from others


class EndpointError(Exception):
    """A request that failed for good; `reason` is one line (no key, no traceback)."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(f"{reason} (after {attempts} attempt{'s' * (attempts != 1)})")
        self.reason, self.attempts = reason, attempts


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


def image_part(png: bytes, mime: str = "image/png") -> dict:
    """An image as a chat content part: a base64 data URL."""
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64," + base64.b64encode(png).decode("ascii")}}


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested pause: `retry-after-ms`, `retry-after` in seconds or as an HTTP date; None if absent
    or unreadable."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


class _Attempt:
    """The sockets one attempt opened, and whether its deadline passed (shared with the watchdog thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.expired = False

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            self.sockets.append(sock)
            expired = self.expired
        if expired:  # connected after the deadline: cut at once
            _shutdown(sock)

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            socks = list(self.sockets)
        for s in socks:
            _shutdown(s)


def _shutdown(sock: socket.socket) -> None:
    # shutdown (not close) wakes a recv blocked in another thread
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class ChatEndpoint:
    """`complete(messages)` -> ChatReply, or EndpointError once the retries are spent. Thread-safe."""

    def __init__(self, settings: EndpointSettings, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        self.settings = settings
        self._sleep = sleep  # injectable: tests read the waits instead of timing them
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(settings.max_concurrency)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.stats = {"attempts": 0, "retries": 0, "failures": 0, "successes": 0}
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        # no key: send no Authorization header at all (the SDK insists on a key; Omit on each request drops it)
        self._extra_headers = {} if key else {"Authorization": openai.Omit()}
        http = openai.DefaultHttpxClient(
            event_hooks={"request": [self._attach_trace]},
            limits=httpx2.Limits(max_connections=settings.max_concurrency, max_keepalive_connections=0),
            timeout=settings.timeout_s)
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=key or "unused", max_retries=0,
                                     timeout=settings.timeout_s, http_client=http)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------------------------- internals

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _attach_trace(self, request) -> None:
        """httpx request hook (runs on the calling thread): report the attempt's new sockets to its watchdog."""
        attempt: _Attempt | None = getattr(self._local, "attempt", None)
        if attempt is None:
            return

        def trace(name: str, info: dict) -> None:
            if name in ("connection.connect_tcp.complete", "connection.connect_unix_socket.complete"):
                stream = info.get("return_value")
                attempt.add(stream.get_extra_info("socket") if stream is not None else None)

        request.extensions["trace"] = trace

    def _post(self, messages: list[dict], max_tokens: int) -> Any:
        """One request within the overall deadline; the SDK's exceptions pass through."""
        attempt = _Attempt()
        watchdog = threading.Timer(self.settings.timeout_s, attempt.expire)
        watchdog.daemon = True
        self._local.attempt = attempt
        watchdog.start()
        try:
            return self._client.chat.completions.create(
                model=self.settings.model, messages=messages, max_tokens=max_tokens,
                temperature=self.settings.temperature, extra_headers=self._extra_headers)
        except Exception as e:
            if attempt.expired:
                raise _Retryable(f"deadline: no complete reply within timeout_s={self.settings.timeout_s:g}s") from e
            raise
        finally:
            watchdog.cancel()
            self._local.attempt = None

    def _attempt(self, messages: list[dict], max_tokens: int) -> ChatReply:
        try:
            with self._slots:  # held only while the request is in flight
                self._count("attempts")
                completion = self._post(messages, max_tokens)
        except _Retryable:
            raise
        except openai.APIStatusError as e:
            status = e.status_code
            detail = _one_line(getattr(e.response, "text", "") or e.message)
            if status >= 500 or status in RETRY_STATUS:
                raise _Retryable(f"HTTP {status}: {detail}", retry_after_seconds(e.response.headers)) from e
            raise _Fatal(f"HTTP {status}: {detail}") from e
        except openai.APITimeoutError as e:
            raise _Retryable(f"timeout: no reply within timeout_s={self.settings.timeout_s:g}s") from e
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise _Retryable(f"connection error: {type(cause).__name__}: {_one_line(cause)}") from e
        except (ValueError, TypeError, AttributeError, KeyError) as e:  # the SDK could not decode the body
            raise _Retryable(f"malformed reply: {type(e).__name__}: {_one_line(e)}") from e
        return _reply(completion)

    def _wait(self, attempt_index: int, retry_after: float | None) -> float:
        with self._rng_lock:
            u = self._rng.random()
        if retry_after is not None:
            return retry_after * (1.0 + 0.1 * u)  # never earlier than the server asked
        step = min(self.settings.backoff_s * (2 ** attempt_index), self.settings.backoff_max_s)
        return step * (0.5 + 0.5 * u)

    # ---------------------------------------------------------------------------------------------------- public

    def complete(self, messages: list[dict], max_tokens: int) -> ChatReply:
        retries = self.settings.max_retries
        t0 = time.perf_counter()
        for n in range(retries + 1):
            try:
                reply = self._attempt(messages, max_tokens)
            except _Fatal as e:
                self._count("failures")
                raise EndpointError(f"{e} (not retried)", n + 1) from None
            except _Retryable as e:
                if n == retries:
                    self._count("failures")
                    raise EndpointError(str(e), n + 1) from None
                if e.retry_after is not None and e.retry_after > MAX_RETRY_AFTER_S:
                    self._count("failures")
                    raise EndpointError(f"{e}; Retry-After {e.retry_after:g}s exceeds {MAX_RETRY_AFTER_S:g}s",
                                        n + 1) from None
                self._count("retries")
                self._sleep(self._wait(n, e.retry_after))
                continue
            self._count("successes")
            return replace(reply, attempts=n + 1, latency_s=time.perf_counter() - t0)
        raise AssertionError("unreachable: the loop returns or raises")

    def complete_each(self, items: Sequence[T], build: Callable[[T], tuple[list[dict], int]]
                      ) -> Iterator[tuple[int, ChatReply | EndpointError]]:
        """(index, reply or error) for every item, in completion order; `build(item)` -> (messages, max_tokens).
        At most `max_concurrency` in flight; a request that cannot be built fails alone."""

        def one(item: T) -> ChatReply | EndpointError:
            try:
                messages, max_tokens = build(item)
            except Exception as e:  # noqa: BLE001 - e.g. an unreadable image: this request fails, not the batch
                self._count("failures")
                return EndpointError(f"cannot build the request: {type(e).__name__}: {_one_line(e)}", 0)
            try:
                return self.complete(messages, max_tokens)
            except EndpointError as e:
                return e

        if not items:
            return
        with ThreadPoolExecutor(max_workers=min(self.settings.max_concurrency, len(items)),
                                thread_name_prefix="chat-endpoint") as pool:
            futures = {pool.submit(one, item): i for i, item in enumerate(items)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


def _reply(completion: Any) -> ChatReply:
    """The first choice's text of a chat completion; _Retryable when the 200 reply is not one."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Retryable(f"malformed reply: no choices ({_one_line(_preview(completion))})")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _Retryable(f"malformed reply: message content is not text ({_one_line(repr(content), 80)})")
    usage = getattr(completion, "usage", None)
    tokens = getattr(usage, "completion_tokens", None)
    medlvr = (getattr(completion, "model_extra", None) or {}).get("medlvr")
    return ChatReply(content.strip(), str(getattr(choices[0], "finish_reason", "") or ""),
                     tokens if isinstance(tokens, int) else None, 0,
                     medlvr=medlvr if isinstance(medlvr, dict) else None)


def _preview(completion: Any) -> str:
    try:
        return json.dumps(completion.to_dict())[:120]
    except Exception:  # noqa: BLE001 - only for the message
        return repr(completion)[:120]
