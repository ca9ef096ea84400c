"""The shared OpenAI-compatible endpoint client (`medlvr.corpus.chat_endpoint`) against a fake server on 127.0.0.1:
errors, rate limits with Retry-After, hangs, trickles and garbage each give the right number of attempts and a
one-line reason; waits are jittered exponential backoff or the server's Retry-After; the key never shows."""

import logging
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medlvr.corpus.chat_endpoint import (ChatEndpoint, EndpointError, EndpointSettings, image_part,
                                         retry_after_seconds)
from tests.fake_chat_server import chat_reply, fake_chat_server, unused_port

SECRET = "sk-test-secret-0123456789"
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Is there a fracture?"}]}]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # a proxy from the environment must not intercept loopback test traffic
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TEST_ENDPOINT_KEY", SECRET)


def _client(url, sleeps=None, **kw):
    base = dict(base_url=url, model="served", api_key_env="TEST_ENDPOINT_KEY", timeout_s=5.0, max_retries=3,
                backoff_s=0.5, backoff_max_s=4.0, max_concurrency=4)
    base.update(kw)
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return ChatEndpoint(EndpointSettings(**base), sleep=record, rng=random.Random(0))


def test_good_reply_request_shape_and_key():
    with fake_chat_server(lambda s, n, body: (200, chat_reply(" yes ", completion_tokens=2), {})) as srv:
        c = _client(srv.base_url)
        reply = c.complete([{"role": "user", "content": [image_part(b"\x89PNG-bytes"),
                                                         {"type": "text", "text": "q"}]}], max_tokens=17)
    assert (reply.text, reply.finish_reason, reply.completion_tokens, reply.attempts) == ("yes", "stop", 2, 1)
    body = srv.bodies[0]
    assert body["model"] == "served" and body["max_tokens"] == 17 and body["temperature"] == 0.0
    assert body["messages"][0]["content"][0]["image_url"]["url"] == "data:image/png;base64,iVBORy1ieXRlcw=="
    assert srv.headers_seen[0]["authorization"] == f"Bearer {SECRET}"


def test_no_key_sends_no_authorization_header(monkeypatch):
    monkeypatch.delenv("TEST_ENDPOINT_KEY")
    with fake_chat_server(lambda s, n, body: (200, chat_reply("no"), {})) as srv:
        assert _client(srv.base_url).complete(MESSAGES, 8).text == "no"
    assert "authorization" not in srv.headers_seen[0]


def test_500_then_success_waits_jittered_exponential_backoff():
    sleeps = []
    with fake_chat_server(lambda s, n, body: (500, {"error": "busy"}, {}) if n <= 3 else
                          (200, chat_reply("fine"), {})) as srv:
        c = _client(srv.base_url, sleeps, max_retries=3, backoff_s=0.5)
        assert c.complete(MESSAGES, 8).attempts == 4
    assert srv.calls == 4 and c.stats == {"attempts": 4, "retries": 3, "failures": 0, "successes": 1}
    steps = [0.5, 1.0, 2.0]
    assert len(sleeps) == 3 and all(step / 2 <= w <= step for w, step in zip(sleeps, steps))
    assert len({round(w / step, 6) for w, step in zip(sleeps, steps)}) == 3  # jittered: not one fixed fraction


def test_backoff_is_capped():
    sleeps = []
    with fake_chat_server(lambda s, n, body: (503, {"error": "down"}, {})) as srv:
        c = _client(srv.base_url, sleeps, max_retries=5, backoff_s=1.0, backoff_max_s=3.0)
        with pytest.raises(EndpointError) as e:
            c.complete(MESSAGES, 8)
    assert srv.calls == 6 and e.value.attempts == 6
    assert max(sleeps) <= 3.0 and min(sleeps[2:]) >= 1.5
    assert str(e.value) == 'HTTP 503: {"error": "down"} (after 6 attempts)'


@pytest.mark.parametrize("header,expected", [({"Retry-After": "7"}, 7.0), ({"retry-after-ms": "2500"}, 2.5)])
def test_429_honours_retry_after(header, expected):
    sleeps = []
    with fake_chat_server(lambda s, n, body: (429, {"error": "slow down"}, header) if n == 1 else
                          (200, chat_reply("ok"), {})) as srv:
        assert _client(srv.base_url, sleeps, backoff_s=0.01).complete(MESSAGES, 8).text == "ok"
    assert srv.calls == 2 and len(sleeps) == 1
    assert expected <= sleeps[0] <= expected * 1.1  # never earlier than asked, a little jitter on top


def test_retry_after_beyond_the_limit_gives_up_at_once():
    with fake_chat_server(lambda s, n, body: (429, {"error": "maintenance"}, {"Retry-After": "3600"})) as srv:
        with pytest.raises(EndpointError, match="Retry-After 3600s exceeds"):
            _client(srv.base_url, []).complete(MESSAGES, 8)
    assert srv.calls == 1


def test_retry_after_header_forms():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a past date: now
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_400_is_not_retried():
    with fake_chat_server(lambda s, n, body: (400, {"error": "unknown model"}, {})) as srv:
        with pytest.raises(EndpointError) as e:
            _client(srv.base_url, []).complete(MESSAGES, 8)
    assert srv.calls == 1 and "HTTP 400" in str(e.value) and "not retried" in str(e.value)


GARBAGE = {
    "not-json": (b"<html>bad gateway</html>", "malformed reply"),
    "empty-choices": ({"id": "x", "choices": []}, "no choices"),
    "wrong-schema": ({"result": "yes"}, "no choices"),
    "content-not-text": ({"choices": [{"index": 0, "message": {"role": "assistant", "content": 5}}]},
                         "content is not text"),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_200_replies_are_retried_then_fail_with_a_reason(kind, caplog):
    payload, reason = GARBAGE[kind]
    with fake_chat_server(lambda s, n, body: (200, payload, {})) as srv:
        c = _client(srv.base_url, [], max_retries=2)
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(EndpointError) as e:
                c.complete(MESSAGES, 8)
    assert srv.calls == 3 and e.value.attempts == 3 and c.stats["failures"] == 1
    msg = str(e.value)
    assert reason in msg and "\n" not in msg and msg.endswith("(after 3 attempts)")
    assert SECRET not in msg and SECRET not in caplog.text


def test_garbage_then_good_reply_recovers():
    with fake_chat_server(lambda s, n, body: (200, b"{not json" if n == 1 else chat_reply("B"), {})) as srv:
        assert _client(srv.base_url, []).complete(MESSAGES, 8).text == "B"
    assert srv.calls == 2


def test_hanging_server_hits_the_deadline():
    def hang(s, n, body):
        s.release.wait(10)  # released at shutdown
        return 200, chat_reply("too late"), {}

    with fake_chat_server(hang) as srv:
        c = _client(srv.base_url, [], timeout_s=0.3, max_retries=1)
        with pytest.raises(EndpointError) as e:
            c.complete(MESSAGES, 8)
    assert srv.calls == 2 and e.value.attempts == 2
    assert e.value.reason.startswith(("deadline", "timeout"))


class _Trickle(BaseHTTPRequestHandler):
    """200 and then one byte every 0.3 s: each read is quick, the reply never completes in time."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        data = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "a slow reply"}}]}'
        self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                         .encode())
        try:
            for i in range(40):
                if self.server.release.wait(0.3):
                    return
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
        except OSError:
            with self.server.lock:
                self.server.hangups += 1


def test_trickling_server_cannot_defeat_timeout_s():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    srv.daemon_threads, srv.handle_error = True, lambda *a: None
    srv.release, srv.lock, srv.hangups = threading.Event(), threading.Lock(), 0
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        c = _client(f"http://127.0.0.1:{srv.server_address[1]}/v1", [], timeout_s=1.0, max_retries=1)
        with pytest.raises(EndpointError) as e:
            c.complete(MESSAGES, 8)
        assert e.value.reason == "deadline: no complete reply within timeout_s=1s" and e.value.attempts == 2
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def test_connection_refused_is_retried_and_bounded():
    c = _client(f"http://127.0.0.1:{unused_port()}/v1", [], max_retries=2)
    with pytest.raises(EndpointError) as e:
        c.complete(MESSAGES, 8)
    assert e.value.attempts == 3 and e.value.reason.startswith("connection error")


def test_complete_each_keeps_the_concurrency_limit_and_reports_each_item():
    active, peak, lock = [0], [0], threading.Lock()

    def slow(s, n, body):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        s.release.wait(0.1)
        with lock:
            active[0] -= 1
        text = body["messages"][0]["content"][0]["text"]
        return (500, {"error": "no"}, {}) if text == "q3" else (200, chat_reply(text.upper()), {})

    with fake_chat_server(slow) as srv:
        c = _client(srv.base_url, [], max_concurrency=2, max_retries=0)
        got = dict(c.complete_each([f"q{i}" for i in range(6)],
                                   lambda q: ([{"role": "user", "content": [{"type": "text", "text": q}]}], 4)))
    assert sorted(got) == list(range(6)) and peak[0] <= 2
    assert isinstance(got[3], EndpointError) and [got[i].text for i in (0, 1, 2, 4, 5)] == ["Q0", "Q1", "Q2", "Q4",
                                                                                            "Q5"]
