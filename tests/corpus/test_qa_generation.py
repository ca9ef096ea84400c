"""QA text generation: template backend, tiny offline Qwen2.5-VL, OpenAI-compatible HTTP, cache, verifier."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.corpus.config import build_config  # noqa: E402
from medlvr.corpus.qa.cache import CachedBackend  # noqa: E402
from medlvr.corpus.qa.generation import make_backend
from medlvr.corpus.qa.requests import Backend, GeneratorConfig, GenRequest
from medlvr.corpus.qwen.format import model_box, smart_resize
from medlvr.corpus.qa.openai_backend import OpenAIBackend  # noqa: E402
from medlvr.corpus.qa.template_backend import TemplateBackend  # noqa: E402
from medlvr.corpus.qa.verify import EntityMatcher, find_boxes, verify  # noqa: E402
from tests.fake_chat_server import fake_chat_server, unused_port  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def png(h: int, w: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def caption_req(i: int = 0, image: bytes | None = None, box=(10.0, 12.0, 40.0, 50.0), **fields) -> GenRequest:
    f = {"label": "pleural effusion", "modality": "chest X-ray", "position": "lower-right", "size_mm": 42.0,
         "facts": ["pleural effusion is located in the pleural cavity", ("pleural effusion", "differential_with",
                                                                          "atelectasis")]}
    f.update(fields)
    return GenRequest(task="region_caption", prompt=f"Describe {{box}} (record {i}). Facts: {f['facts']}",
                      image_png=image, box=box, locked=(f["label"],), fields=f)


def para_req(question: str, locked=("liver",), modality="CT") -> GenRequest:
    return GenRequest(task="paraphrase", prompt=f"Paraphrase: {question}", locked=tuple(locked),
                      fields={"question": question, "modality": modality})


# --------------------------------------------------------------------------------------------------------------
# template backend and config


def test_template_is_deterministic_and_keeps_locked_strings():
    reqs = [caption_req(i) for i in range(30)] + [para_req(f"Where is the liver in slice {i}?") for i in range(30)]
    a, b = TemplateBackend().generate(reqs), TemplateBackend().generate(reqs)
    assert a == b
    assert all(isinstance(t, str) and t for t in a)
    for r, t in zip(reqs, a):
        assert all(s in t for s in r.locked), t
    # several phrasings are actually used, and the structured facts are worded
    assert len({t.split(" (")[0][:25] for t in a[:30]}) >= 3
    assert any("42 mm" in t and "lower-right" in t for t in a[:30])
    assert len(set(a[30:])) == 30  # paraphrases keep the question


def test_template_paraphrase_never_breaks_a_locked_string_or_an_acronym():
    t = TemplateBackend()
    for i in range(40):
        q = f"Liver lesion {i}: where is it?"
        out = t.one(para_req(q, locked=("Liver lesion",)))
        assert "Liver lesion" in out
        out = t.one(para_req(f"CT number {i}: is the liver visible?"))
        assert "cT" not in out
    # a locked string the templates cannot know about is still guaranteed
    out = t.one(GenRequest(task="region_caption", prompt="x", locked=("answer slot A",), fields={"label": "cyst"}))
    assert "answer slot A" in out and "cyst" in out


def test_config_from_dict_and_make_backend(tmp_path):
    cfg = build_config(GeneratorConfig, {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                         "concurrency": 3, "timeout_s": "1.5", "cache_dir": str(tmp_path)})
    assert cfg.concurrency == 3 and cfg.timeout_s == 1.5
    backend = make_backend(cfg)
    assert isinstance(backend, CachedBackend) and isinstance(backend.backend, OpenAIBackend)
    assert isinstance(backend, Backend)
    assert isinstance(make_backend(GeneratorConfig()), TemplateBackend)
    with pytest.raises(ValueError, match="unknown"):
        build_config(GeneratorConfig, {"backnd": "template"})
    with pytest.raises(ValueError):
        build_config(GeneratorConfig, {"backend": "gpt"})
    with pytest.raises(ValueError):
        GenRequest(task="summarise", prompt="x")
    with pytest.raises(ValueError):
        GenRequest(task="paraphrase", prompt="x", box=(5, 5, 1, 1))


def test_model_box_follows_qwen_resize():
    assert smart_resize(100, 200, min_pixels=56 * 56, max_pixels=28 * 28 * 1280) == (112, 196)
    assert model_box((0, 0, 200, 100), (100, 200), 56 * 56, 28 * 28 * 1280) == (0, 0, 196, 112)
    assert model_box((50, 25, 100, 50), (100, 200), 56 * 56, 28 * 28 * 1280) == (49, 28, 98, 56)


# --------------------------------------------------------------------------------------------------------------
# transformers backend on the tiny offline Qwen2.5-VL


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import build_tiny

    bundle = build_tiny(seed=0)
    return save_checkpoint(bundle.model, bundle.processor, tmp_path_factory.mktemp("tiny_qwen"))


def test_transformers_batched_equals_one_by_one(tiny_dir):
    from medlvr.corpus.qa.transformers_backend import TransformersBackend

    sizes = [(64, 80), (120, 90), (56, 56), (100, 140)]
    reqs = [caption_req(i, image=png(h, w, seed=i), box=(5.0, 6.0, 40.0, 50.0)) for i, (h, w) in enumerate(sizes)]
    reqs.append(para_req("Where is the liver?"))  # text-only request mixed into an image batch
    batched = TransformersBackend(GeneratorConfig(backend="transformers", model_path=str(tiny_dir), batch_size=5,
                                                  max_new_tokens=6))
    single = TransformersBackend(GeneratorConfig(backend="transformers", model_path=str(tiny_dir), batch_size=1,
                                                 max_new_tokens=6))
    out_b, out_s = batched.generate(reqs), single.generate(reqs)
    assert all(isinstance(t, str) for t in out_b)
    assert out_b == out_s
    assert batched.model_id == single.model_id and batched.model_id.startswith(tiny_dir.name + "@")


def test_transformers_box_is_rendered_in_resized_pixels(tiny_dir):
    from medlvr.corpus.qa.transformers_backend import TransformersBackend

    be = TransformersBackend(GeneratorConfig(backend="transformers", model_path=str(tiny_dir), max_new_tokens=2))
    img = png(100, 200)
    req = caption_req(0, image=img, box=(50.0, 25.0, 100.0, 50.0))
    text = be._messages(req)
    # the image the model sees, from the processor itself: grid (t, h, w) patches of 14 px
    grid = be.processor(text=[text], images=[Image.open(io.BytesIO(img))], return_tensors="pt")["image_grid_thw"][0]
    rh, rw = int(grid[1]) * 14, int(grid[2]) * 14
    sx, sy = rw / 200, rh / 100
    assert f"[{round(50 * sx)}, {round(25 * sy)}, {round(100 * sx)}, {round(50 * sy)}]" in text
    assert "<|image_pad|>" in text


def test_transformers_refuses_non_local_paths(tmp_path):
    from medlvr.corpus.qa.transformers_backend import TransformersBackend

    with pytest.raises(FileNotFoundError):
        TransformersBackend(GeneratorConfig(backend="transformers", model_path="Qwen/Qwen2.5-VL-7B-Instruct"))


# --------------------------------------------------------------------------------------------------------------
# openai backend against real HTTP servers on loopback


def _ok(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                      "content": text}}]}


@pytest.fixture
def server():
    """server(behaviour) -> (FakeChatServer, base_url); every server is shut down at teardown."""
    with ExitStack() as stack:
        def start(behaviour):
            srv = stack.enter_context(fake_chat_server(behaviour))
            return srv, srv.base_url

        yield start


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # a proxy from the environment must not intercept loopback test traffic
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _cfg(url: str, **kw) -> GeneratorConfig:
    base = dict(backend="openai", base_url=url, model="qwen2.5-vl-7b", timeout_s=5.0, max_retries=3,
                backoff_s=0.01, max_new_tokens=77, concurrency=4)
    base.update(kw)
    return GeneratorConfig(**base)


def test_openai_good_server_request_shape(server, monkeypatch):
    srv, url = server(lambda s, n, body: (200, _ok(f"  reply {n}  ")))
    monkeypatch.setenv("TEST_QA_KEY", "sk-test")
    img = png(100, 200, seed=3)
    be = OpenAIBackend(_cfg(url, api_key_env="TEST_QA_KEY", concurrency=1))
    out = be.generate([caption_req(0, image=img, box=(50.0, 25.0, 100.0, 50.0)), para_req("Where is the liver?")])
    assert out == ["reply 1", "reply 2"]
    body = srv.bodies[0]
    assert body["model"] == "qwen2.5-vl-7b" and body["max_tokens"] == 77 and body["temperature"] == 0.0
    parts = body["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url"
    data_url = parts[0]["image_url"]["url"]
    assert data_url.startswith("data:image/png;base64,")
    assert base64.b64decode(data_url.split(",", 1)[1]) == img
    # Qwen2.5-VL default resize of 100x200 is 112x196 (both multiples of 28): box in those pixels
    assert parts[1]["type"] == "text" and "Describe [49, 28, 98, 56] (record 0)" in parts[1]["text"]
    assert srv.bodies[1]["messages"][-1]["content"] == [{"type": "text", "text": "Paraphrase: Where is the liver?"}]
    assert srv.headers_seen[0]["authorization"] == "Bearer sk-test"


def test_openai_retries_5xx_then_succeeds(server):
    srv, url = server(lambda s, n, body: (500, {"error": "busy"}) if n <= 2 else (200, _ok("fine")))
    be = OpenAIBackend(_cfg(url, max_retries=3))
    assert be.generate([para_req("Where is the liver?")]) == ["fine"]
    assert srv.calls == 3 and be.stats["retries"] == 2 and be.stats["failures"] == 0


def test_openai_always_500_gives_none_after_bounded_attempts(server):
    srv, url = server(lambda s, n, body: (503, {"error": "down"}))
    be = OpenAIBackend(_cfg(url, max_retries=2, backoff_s=0.02))
    t0 = time.monotonic()
    assert be.generate([para_req("Where is the liver?")]) == [None]
    assert srv.calls == 3  # first attempt + 2 retries
    assert time.monotonic() - t0 < 2.0  # backoff 0.02 + 0.04 s
    assert be.stats["failures"] == 1


def test_openai_400_is_not_retried(server):
    srv, url = server(lambda s, n, body: (400, {"error": "bad model"}))
    be = OpenAIBackend(_cfg(url, max_retries=5))
    assert be.generate([para_req("Where is the liver?")]) == [None]
    assert srv.calls == 1 and be.stats["retries"] == 0


def test_openai_hanging_server_times_out(server):
    def hang(s, n, body):
        s.release.wait(10)  # released at teardown
        return 200, _ok("too late")

    srv, url = server(hang)
    be = OpenAIBackend(_cfg(url, timeout_s=0.3, max_retries=1, backoff_s=0.01))
    t0 = time.monotonic()
    assert be.generate([para_req("Where is the liver?")]) == [None]
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, elapsed
    assert be.stats["attempts"] == 2


class _TrickleHandler(BaseHTTPRequestHandler):
    """Answers 200 and then one byte every 0.3 s (headers too when `trickle_headers`); bounded: 40 bytes at most."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        self.rfile.read(int(self.headers["Content-Length"]))
        with srv.lock:
            srv.calls += 1
        data = json.dumps(_ok("a reply that never completes in time")).encode()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                ).encode()
        stream = head + data
        if not srv.trickle_headers:
            self.wfile.write(head)
            self.wfile.flush()
            stream = data
        try:
            for i in range(40):  # 12 s at most, far past the client's 1 s deadline
                if srv.release.wait(0.3):
                    return
                self.wfile.write(stream[i:i + 1])
                self.wfile.flush()
        except OSError:  # the client hung up: what the test wants to see
            with srv.lock:
                srv.disconnects += 1
            return
        with srv.lock:
            srv.completed += 1


@pytest.mark.parametrize("trickle_headers", [False, True], ids=["body", "headers"])
def test_openai_trickling_server_hits_the_overall_deadline(trickle_headers, caplog):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler)
    srv.daemon_threads = True
    srv.handle_error = lambda *a: None
    srv.lock, srv.calls, srv.disconnects, srv.completed = threading.Lock(), 0, 0, 0
    srv.release, srv.trickle_headers = threading.Event(), trickle_headers
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        be = OpenAIBackend(_cfg(f"http://127.0.0.1:{srv.server_address[1]}/v1", timeout_s=1.0, max_retries=1,
                                backoff_s=0.01))
        with caplog.at_level("WARNING", logger="medlvr.corpus.qa.openai_backend"):
            assert be.generate([para_req("Where is the liver?")]) == [None]
        assert be.stats["attempts"] == 2 and be.stats["retries"] == 1 and be.stats["failures"] == 1
        [record] = caplog.records
        assert "after 2 attempts" in record.message and "deadline" in record.message
        assert "\n" not in record.message
        for _ in range(100):  # the handlers notice the hang-up at their next write (0.3 s later)
            with srv.lock:
                if srv.disconnects == 2:
                    break
            time.sleep(0.05)
        assert srv.calls == 2 and srv.disconnects == 2 and srv.completed == 0
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def test_openai_connection_refused_is_retried_and_bounded():
    be = OpenAIBackend(_cfg(f"http://127.0.0.1:{unused_port()}/v1", max_retries=2, backoff_s=0.01, timeout_s=1.0))
    assert be.generate([para_req("Where is the liver?")]) == [None]
    assert be.stats["attempts"] == 3


def test_openai_concurrency_limit_is_respected(server):
    def slow(s, n, body):
        time.sleep(0.15)
        return 200, _ok(body["messages"][-1]["content"][-1]["text"])

    srv, url = server(slow)
    be = OpenAIBackend(_cfg(url, concurrency=3))
    reqs = [para_req(f"Where is the liver {i}?") for i in range(12)]
    # two callers share the backend: the limit is per backend, not per generate() call
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(be.generate, [reqs[:6], reqs[6:]]))
    assert [t for o in outs for t in o] == [f"Paraphrase: Where is the liver {i}?" for i in range(12)]
    assert srv.calls == 12
    assert 2 <= srv.max_active <= 3


# --------------------------------------------------------------------------------------------------------------
# cache


class CountingBackend:
    def __init__(self, fail_on: set[str] = frozenset(), delay: float = 0.0):
        self.model_id = "counting-v1"
        self.calls = 0  # requests received
        self.fail_on = fail_on
        self.delay = delay
        self.lock = threading.Lock()

    def generate(self, reqs):
        with self.lock:
            self.calls += len(reqs)
        time.sleep(self.delay)
        return [None if r.prompt in self.fail_on else f"text for {r.prompt} / {r.box}" for r in reqs]


def test_cache_second_run_makes_no_calls(tmp_path):
    reqs = [caption_req(i, image=png(30, 30, seed=i)) for i in range(5)] + [para_req("Where is the liver?")]
    first = CountingBackend()
    with CachedBackend(first, tmp_path) as c:
        out1 = c.generate(reqs)
        assert c.stats() == {"hits": 0, "misses": 6, "failures": 0}
    assert first.calls == 6
    second = CountingBackend()
    with CachedBackend(second, tmp_path) as c:  # a rebuild: new process, same inputs
        assert c.generate(reqs) == out1
        assert c.stats() == {"hits": 6, "misses": 0, "failures": 0}
    assert second.calls == 0
    # any change in image, box, locked or model is a different key
    changed = [caption_req(0, image=png(30, 30, seed=99)), caption_req(0, image=png(30, 30, seed=0), box=(1, 1, 9, 9)),
               GenRequest(**{**reqs[0].__dict__, "locked": ("other",)})]
    with CachedBackend(second, tmp_path) as c:
        c.generate(changed)
        assert c.stats()["misses"] == 3
    other_model = CountingBackend()
    other_model.model_id = "counting-v2"
    with CachedBackend(other_model, tmp_path) as c:
        c.generate(reqs[:1])
    assert other_model.calls == 1


def test_cache_does_not_store_failures(tmp_path):
    reqs = [para_req("Where is the liver?"), para_req("Is the liver enlarged?")]
    flaky = CountingBackend(fail_on={"Paraphrase: Is the liver enlarged?"})
    with CachedBackend(flaky, tmp_path) as c:
        assert c.generate(reqs)[1] is None
        assert c.stats()["failures"] == 1 and len(c) == 1
    healed = CountingBackend()
    with CachedBackend(healed, tmp_path) as c:
        out = c.generate(reqs)
    assert out[1] is not None and healed.calls == 1  # only the failed one is asked again


def test_cache_is_thread_safe_and_pays_each_key_once(tmp_path):
    reqs = [para_req(f"Where is the liver {i}?") for i in range(20)]
    inner = CountingBackend(delay=0.05)
    cache = CachedBackend(inner, tmp_path)
    with ThreadPoolExecutor(8) as pool:  # 8 callers ask overlapping batches at the same time
        outs = list(pool.map(lambda j: cache.generate(reqs[j % 4:][:10] + reqs[:3]), range(16)))
    expected = {r.prompt: f"text for {r.prompt} / None" for r in reqs}
    for j, out in enumerate(outs):
        assert out == [expected[r.prompt] for r in reqs[j % 4:][:10] + reqs[:3]]
    assert inner.calls == len({r.prompt for j in range(16) for r in reqs[j % 4:][:10] + reqs[:3]})
    cache.close()


class ScriptedBackend:
    """Replies from a script, one per call per request (the last reply repeats): a server that gets fixed."""

    def __init__(self, replies: list[str]):
        self.model_id = "scripted-v1"
        self.replies = replies
        self.calls = 0

    def generate(self, reqs):
        text = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        return [text for _ in reqs]


def test_cache_stores_only_accepted_replies(tmp_path):
    req = para_req("Where is the liver?")
    accept = lambda i, text: verify(text, set(), {}, req.locked).ok  # noqa: E731 - the caller's verdict
    be = ScriptedBackend(["Where is the spleen?", "Where can the liver be seen?"])
    with CachedBackend(be, tmp_path) as c:  # build 1: the server's reply drops the locked "liver"
        assert c.generate([req], accept=accept) == ["Where is the spleen?"]
        assert len(c) == 0
    with CachedBackend(be, tmp_path) as c:  # build 2: asked again, the good reply is cached
        assert c.generate([req], accept=accept) == ["Where can the liver be seen?"]
        assert be.calls == 2 and len(c) == 1
    with CachedBackend(be, tmp_path) as c:  # build 3: served from the cache
        assert c.generate([req], accept=accept) == ["Where can the liver be seen?"]
        assert be.calls == 2 and c.stats()["hits"] == 1


def test_cache_asks_again_for_a_stored_reply_the_verifier_now_rejects(tmp_path):
    req = para_req("Where is the liver?")
    be = ScriptedBackend(["Where is the spleen?", "Where can the liver be seen?"])
    with CachedBackend(be, tmp_path) as c:  # an older cache that stored without a verdict
        c.generate([req])
        assert len(c) == 1
    with CachedBackend(be, tmp_path) as c:
        assert c.generate([req], accept=lambda i, text: "liver" in text) == ["Where can the liver be seen?"]
        assert be.calls == 2
    with CachedBackend(be, tmp_path) as c:
        assert c.generate([req], accept=lambda i, text: "liver" in text) == ["Where can the liver be seen?"]
        assert be.calls == 2


def test_text_stage_caches_only_verified_captions(server, tmp_path):
    from medlvr.corpus.build import BuildConfig
    from medlvr.corpus.kg.graph import load_graph
    from medlvr.corpus.qa.questions import ImageFacts, RoiFact
    from medlvr.corpus.qa.text import TextStage

    replies = ["A pneumothorax in this region.", "The pleural effusion fills the lower right region."]
    srv, url = server(lambda s, n, body: (200, _ok(replies[min(n, 2) - 1])))
    cfg = BuildConfig(generator=_cfg(url, max_retries=0), caption_rate=1.0, paraphrase_rate=0.0)
    kg = load_graph()
    facts = ImageFacts("img0", "sample", "chest X-ray", 64, 64,
                       (RoiFact("pleural effusion", "kg:pleural_effusion", (10.0, 12.0, 40.0, 50.0), 0),))
    row = {"png": png(64, 64)}

    def build():
        stage = TextStage(cfg, kg, tmp_path)
        pairs: list = []
        stage.run([(row, facts, pairs)])
        stage.backend.close()
        return stage.stats, pairs

    stats, pairs = build()  # the server invents an entity and drops the locked label: rejected, not cached
    assert stats["caption_rejected"] == 1 and pairs == [] and srv.calls == 1
    stats, pairs = build()  # the fixed server is asked again
    assert stats["caption_accepted"] == 1 and pairs[0].caption == replies[1] and srv.calls == 2
    stats, pairs = build()  # the verified reply is served from the cache
    assert stats["caption_accepted"] == 1 and pairs[0].caption == replies[1] and srv.calls == 2


def test_cache_over_openai_makes_no_http_calls_on_rebuild(server, tmp_path):
    srv, url = server(lambda s, n, body: (200, _ok(f"reply {n}")))
    cfg = _cfg(url, cache_dir=str(tmp_path))
    reqs = [caption_req(i, image=png(40, 40, seed=i)) for i in range(4)]
    first = make_backend(cfg).generate(reqs)
    assert srv.calls == 4
    assert make_backend(cfg).generate(reqs) == first
    assert srv.calls == 4


# --------------------------------------------------------------------------------------------------------------
# verifier

TERMS = {
    "pleural effusion": "C_PLEFF", "effusion": "C_EFF", "pleura": "C_PLEURA", "lung": "C_LUNG",
    "pneumothorax": "C_PTX", "atelectasis": "C_ATEL", "mass": "C_MASS", "Nodule/Mass": "C_NODMASS",
    "chest x-ray": "C_CXR", "CXR": "C_CXR", "hydrothorax": "C_PLEFF", "joint effusion": "C_JEFF",
}
ALLOWED = {"C_PLEFF", "C_PLEURA", "C_LUNG", "C_ATEL", "C_CXR"}


def test_verify_longest_match_wins():
    v = verify("A small pleural effusion at the right lung base.", ALLOWED, TERMS, locked=("pleural effusion",))
    assert v.ok, v
    assert ("pleural effusion", "C_PLEFF") in v.mentions and all(c != "C_EFF" for _, c in v.mentions)
    # the bare word is a different (broader) concept, not allowed here
    v = verify("There is an effusion near the pleural effusion.", ALLOWED, TERMS)
    assert not v.ok and v.reason == "foreign_entity" and v.offending == ("effusion",)
    # "joint effusion" is longer than "effusion" and is foreign
    v = verify("Unlike a joint effusion, this pleural effusion ...", ALLOWED, TERMS)
    assert v.offending == ("joint effusion",)


def test_verify_case_whole_words_variants_and_synonyms():
    # case-insensitive, hyphen/space variants, plural, synonym mapped to an allowed concept
    assert verify("PLEURAL-EFFUSION on the CXR; hydrothorax and atelectases.", ALLOWED, TERMS).ok
    # whole words only: "massive" and "masseter" are not "mass"
    assert verify("A massive pleural effusion near the masseter.", ALLOWED, TERMS).ok
    v = verify("Pleural effusion with masses.", ALLOWED, TERMS)
    assert not v.ok and v.offending == ("masses",)
    v = verify("No pneumothorax. (Pneumothorax excluded.)", ALLOWED, TERMS)
    assert v.reason == "foreign_entity" and v.offending == ("pneumothorax", "Pneumothorax")  # negation is no excuse
    v = verify("Suspicious nodule/mass in the lung.", ALLOWED, TERMS)
    assert v.offending == ("nodule/mass",)
    assert verify("Normal study.", ALLOWED, EntityMatcher({})).ok


def test_verify_locked_and_boxes():
    locked = ("pleural effusion",)
    assert verify("Pleural effusion, small.", ALLOWED, TERMS, locked=locked).ok  # capitalised at sentence start
    v = verify("A small effusion of the pleura.", ALLOWED, TERMS, locked=locked)
    assert v.reason == "missing_locked" and v.offending == locked  # reworded: rejected
    assert verify("", ALLOWED, TERMS).reason == "empty" and verify(None, ALLOWED, TERMS).reason == "empty"
    box = (49, 28, 98, 56)
    assert verify("The pleural effusion in [49, 28, 98, 56].", ALLOWED, TERMS, locked, boxes=[box]).ok
    assert verify("The pleural effusion in [49.4, 28, 98, 56.6].", ALLOWED, TERMS, locked, boxes=[box]).ok
    v = verify("The pleural effusion at (10,20),(98,56).", ALLOWED, TERMS, locked, boxes=[box])
    assert v.reason == "box_mismatch" and v.offending == ("[10, 20, 98, 56]",)
    v = verify("pleural effusion <box>[[1,2,3,4]]</box>", ALLOWED, TERMS, locked)  # no box allowed at all
    assert v.reason == "box_mismatch"
    # sizes, single points and counts are not boxes
    assert verify("pleural effusion of 42 x 30 mm at (49, 28), 3, 4, 5 and 6 ribs", ALLOWED, TERMS, locked).ok


def test_find_boxes_formats():
    assert find_boxes('{"bbox_2d": [1, 2, 3, 4]} and (5,6),(7,8) and <box>9,10,11,12</box>') == [
        (1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0), (9.0, 10.0, 11.0, 12.0)]


# One invented box in every notation a model writes coordinates in; "{b}" is filled with the notation's numbers.
BOX_NOTATIONS = [
    "[{0}, {1}, {2}, {3}]", "({0},{1},{2},{3})", "box: {0} {1} {2} {3}", "x1={0} y1={1} x2={2} y2={3}",
    "x from {0} to {2} and y from {1} to {3}", "{0},{1} to {2},{3}", "top-left ({0}, {1}), bottom-right ({2}, {3})",
    "{0}-{2} x {1}-{3}", "at {0} {1} {2} {3} px", "<box>{0},{1},{2},{3}</box>", "xmin {0}, ymin {1}, xmax {2}, ymax {3}",
    "from ({0}, {1}) to ({2}, {3})", "{0}px, {1}px, {2}px, {3}px",
]
RECORD_BOX = (49, 28, 98, 56)


@pytest.mark.parametrize("notation", BOX_NOTATIONS)
def test_verify_rejects_an_invented_box_in_any_notation(notation):
    text = "The pleural effusion lies in " + notation.format(12, 30, 40, 50) + "."
    v = verify(text, ALLOWED, TERMS, ("pleural effusion",), boxes=[RECORD_BOX])
    assert v.reason == "box_mismatch", (notation, v)
    assert not verify(text, ALLOWED, TERMS, ("pleural effusion",)).ok  # no box allowed at all


@pytest.mark.parametrize("notation", BOX_NOTATIONS)
def test_verify_accepts_the_records_own_box_in_any_notation(notation):
    text = "The pleural effusion lies in " + notation.format(*RECORD_BOX) + "."
    assert verify(text, ALLOWED, TERMS, ("pleural effusion",), boxes=[RECORD_BOX]).ok, notation


@pytest.mark.parametrize("text", [
    "A pleural effusion about 12 mm across.",
    "A pleural effusion of 42 x 30 mm in the lower right lung, seen on 2 of 3 views.",
    "A pleural effusion measuring 4 x 5 x 6 x 7 mm.",
    "Pleural effusion between ribs 3, 4, 5 and 6 ribs deep; T2 and 3D imaging at 1.5 T.",
    "The pleural effusion in [49, 28, 98, 56] is about 42 mm across and spans 3 ribs.",
])
def test_verify_accepts_sizes_and_counts(text):
    assert verify(text, ALLOWED, TERMS, ("pleural effusion",), boxes=[RECORD_BOX]).ok, text


def test_template_output_passes_the_verifier():
    terms = {"pleural effusion": "C_PLEFF", "pleural cavity": "C_PCAV", "atelectasis": "C_ATEL", "chest x-ray": "C_CXR"}
    allowed = {"C_PLEFF", "C_PCAV", "C_ATEL", "C_CXR"}
    be = TemplateBackend()
    for i in range(20):
        r = caption_req(i)
        assert verify(be.one(r), allowed, terms, r.locked).ok
