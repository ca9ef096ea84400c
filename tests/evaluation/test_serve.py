"""`medlvr serve` (issue 26 §2): the installed console script serving a tiny checkpoint on 127.0.0.1, called with
the `openai` SDK as any client would: models, a completion with the latent summary, 8 concurrent clients batched
together with the answers they get alone, a bad image, a too-long prompt, a client that disconnects, shutdown
under load; and `medlvr evaluate` through the endpoint runner gives the same per-sample answers as the local
evaluation of the same checkpoint."""

import base64
import io
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import openai
import pytest
import yaml
from PIL import Image

from medlvr.corpus.evalsets.answers import clean
from medlvr.evaluation import cli as evaluation_cli
from tests.evaluation.serving import MEDLVR, SERVED_K, start_server

K = SERVED_K


def png_url(seed: int, size=(64, 80)) -> str:
    arr = np.random.default_rng(seed).integers(0, 255, size=(*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(client, seed: int, question: str = "Is there a mass?", max_tokens: int = 8, **kw):
    content = [{"type": "image_url", "image_url": {"url": png_url(seed)}}, {"type": "text", "text": question}]
    return client.chat.completions.create(model=str(MODEL_ID), messages=[{"role": "user", "content": content}],
                                          max_tokens=max_tokens, **kw)


MODEL_ID = None  # set from /v1/models in the first test that needs it


def _model_id(server) -> str:
    global MODEL_ID
    MODEL_ID = server.client().models.list().data[0].id
    return MODEL_ID


def test_models_and_a_completion_with_the_latent_summary(server, ckpt):
    assert _model_id(server) == str(ckpt)
    r = ask(server.client(), 0, extra_body={"medlvr_latents": True})
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    raw = r.model_dump()
    assert raw["medlvr"]["k_latent"] == K and raw["medlvr"]["n_latent"] == K
    assert len(raw["medlvr"]["states"]) == K and all(s["norm"] > 0 for s in raw["medlvr"]["states"])
    assert r.usage.completion_tokens >= K + 2  # the latent segment is generated too
    plain = ask(server.client(), 0).model_dump()["medlvr"]  # K always; the states' summary only on request
    assert plain == {"k_latent": K, "n_latent": K}


def test_eight_concurrent_clients_batch_together_and_get_their_own_answers(server):
    _model_id(server)
    alone = [ask(server.client(), s).choices[0].message.content for s in range(8)]  # sequential: batches of 1
    before = server.health()
    got: dict[int, str] = {}

    def client(seed):
        got[seed] = ask(server.client(), seed).choices[0].message.content

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    after = server.health()
    assert [got[s] for s in range(8)] == alone  # batching changes no answer
    sizes = after["batch_sizes"][len(before["batch_sizes"]):]
    assert sum(sizes) == 8 and max(sizes) > 1, sizes  # decoded together, not one by one


@pytest.mark.parametrize("url, status, message", [
    ("data:image/png;base64,AAAA", 400, "image 1: not a readable image"),
    ("data:image/png;base64,!!notbase64", 400, "image 1: the data URL is not valid base64"),
    ("https://example.org/x.png", 400, "image 1: remote image URLs are not fetched"),
    ("/etc/hostname", 403, "image 1: the path is outside --allowed-local-media-path"),
])
def test_a_bad_image_is_one_line_openai_error(server, url, status, message):
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}]
    with pytest.raises(openai.APIStatusError) as e:
        server.client().chat.completions.create(model=_model_id(server), messages=[{"role": "user",
                                                                                   "content": content}])
    assert e.value.status_code == status
    err = e.value.response.json()["error"]
    assert err["message"].startswith(message) and "\n" not in err["message"]


def test_a_local_file_under_the_allowed_path_is_read(server):
    Image.fromarray(np.full((56, 56, 3), 128, np.uint8)).save(server.media / "grey.png")
    for url in (str(server.media / "grey.png"), f"file://{server.media / 'grey.png'}"):
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}]
        r = server.client().chat.completions.create(model=_model_id(server), max_tokens=2,
                                                    messages=[{"role": "user", "content": content}])
        assert r.usage.prompt_tokens > 4  # the image's tokens are in the prompt


def test_a_too_long_prompt_is_refused(server):
    with pytest.raises(openai.BadRequestError) as e:
        ask(server.client(), 0, question="lung " * 400)
    err = e.value.response.json()["error"]
    assert err["code"] == "context_length_exceeded" and "at most 300 (--max-prompt-tokens)" in err["message"]
    assert ask(server.client(), 0).choices  # the server carries on


def test_a_client_that_disconnects_is_dropped_and_the_server_carries_on(ckpt, tmp_path):
    srv = start_server(ckpt, "--max-batch", "1", cwd=tmp_path)  # one at a time: the last request surely waits
    global MODEL_ID
    MODEL_ID = str(ckpt)
    n_busy = 8
    busy = [threading.Thread(target=ask, args=(srv.client(), s), kwargs={"max_tokens": 48}) for s in range(n_busy)]
    for t in busy:
        t.start()
    while srv.health()["received"] < n_busy:
        time.sleep(0.05)
    # The server is paused while the client waits, so the client surely gives up (a fast machine used to decode
    # the busy requests and answer within the client's 0.2 s); resumed, it still has the busy requests' decoding
    # ahead of the abandoned one, which it finds disconnected while queued
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(openai.APITimeoutError):
            ask(srv.client(timeout=0.2), 99, max_tokens=48)  # the client gives up and closes its connection
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    for t in busy:
        t.join(timeout=300)
    assert ask(srv.client(), 1).choices  # the server carries on
    health = srv.health()
    rc, out, err = srv.stop()
    assert rc == 0, err
    assert health["disconnected"] == 1 and health["skipped"] == 1  # noticed, and never decoded
    assert health["served"] == n_busy + 1 and "1 disconnected" in out


def test_shutdown_under_load_finishes_the_requests_in_flight(ckpt, tmp_path):
    srv = start_server(ckpt, "--max-batch", "4", cwd=tmp_path)
    global MODEL_ID
    MODEL_ID = str(ckpt)
    results: dict[int, object] = {}

    def client(seed):
        try:
            results[seed] = ask(srv.client(), seed, max_tokens=32).choices[0].finish_reason
        except Exception as e:  # noqa: BLE001
            results[seed] = e

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while srv.health()["received"] < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    rc, out, err = srv.stop()  # SIGTERM with 8 requests in flight (max batch 4: some still queued)
    for t in threads:
        t.join(timeout=60)
    assert rc == 0, err
    assert all(r in ("stop", "length") for r in results.values()) and len(results) == 8, results
    assert "shut down: 8 requests served" in out
    with pytest.raises(openai.APIConnectionError):
        ask(srv.client(), 0)


def test_endpoint_evaluation_of_the_served_model_matches_local_evaluate(server, ckpt, tmp_path, monkeypatch):
    """The baseline runner (`endpoint:` model) against `medlvr serve` and `medlvr evaluate` on the same checkpoint
    give the same answer per sample. The budgets differ only in accounting: evaluate's max_new_tokens counts the
    K + 2 latent-segment positions, the server's max_tokens counts the answer alone."""
    monkeypatch.chdir(tmp_path)
    n_answer = 10
    common = {"data_root": "bench", "sample_data": True, "limit": 4, "benchmarks": {"slake": {}, "mmmu_hm": {}}}
    pixels = {"min_pixels": 3136, "max_pixels": 1003520}  # the checkpoint's budget: the server resizes the same way
    local = {**common, "title": "local", "out_dir": "local",
             "models": [{"name": "m", "path": str(ckpt), "prompt_style": "direct"}],
             "decode": {"max_new_tokens": n_answer + K + 2, "batch_size": 3, **pixels}}
    served = {**common, "title": "served", "out_dir": "served",
              "models": [{"name": "m", "prompt_style": "direct",
                          "endpoint": {"base_url": server.base_url, "model": _model_id(server), "api_key_env": None,
                                       "max_concurrency": 8, "timeout_s": 120.0, "max_retries": 0}}],
              "decode": {"max_new_tokens": n_answer, **pixels}}
    for cfg in (local, served):
        path = tmp_path / f"{cfg['title']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert evaluation_cli.main(["evaluate", "--config", str(path), "--quiet"]) == 0

    def answers(folder):
        recs = {}
        for p in (tmp_path / folder / "predictions").rglob("*.jsonl"):
            for line in p.read_text().splitlines():
                r = json.loads(line)
                # the latent segment stripped; the served K is what the server reported, the local one the model's
                recs[(r["benchmark"], r["sample_id"])] = (clean(r["output"]), r["k_latent"], r["n_latent"],
                                                          r["n_text_tokens"])
        return recs

    got_local, got_served = answers("local"), answers("served")
    assert len(got_local) == 8 and got_local == got_served
    assert {v[1:3] for v in got_served.values()} == {(K, K)}


@pytest.mark.parametrize("args, message", [
    (["--model", "{tmp}/none"], "medlvr serve: error: --model {tmp}/none: no such folder"),
    (["--model", "{ckpt}", "--max-batch", "0"], "medlvr serve: error: --max-batch must be >= 1, got 0"),
    (["--model", "{ckpt}", "--allowed-local-media-path", "{tmp}/none"],
     "medlvr serve: error: --allowed-local-media-path {tmp}/none: no such folder"),
])
def test_a_bad_command_line_is_one_line_and_exit_2(ckpt, tmp_path, args, message):
    argv = [a.format(tmp=tmp_path, ckpt=ckpt) for a in args]
    p = subprocess.run([str(MEDLVR), "serve", *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().startswith(message.format(tmp=tmp_path)) and len(p.stderr.strip().splitlines()) == 1


def test_a_request_past_its_deadline_is_a_504_and_the_server_carries_on(ckpt, tmp_path):
    srv = start_server(ckpt, "--request-timeout", "0.2", "--max-tokens", "600", cwd=tmp_path)
    global MODEL_ID
    MODEL_ID = str(ckpt)
    try:
        with pytest.raises(openai.APIStatusError) as e:
            ask(srv.client(), 0, max_tokens=600)  # 600 decode steps: well over 0.2 s even at 1 ms a step
        assert e.value.status_code == 504
        err = e.value.response.json()["error"]
        assert err["code"] == "timeout" and err["message"] == \
            "the request did not finish within 0.2 s (--request-timeout)"
        assert srv.health()["timed_out"] == 1
    finally:
        rc, out, _ = srv.stop()
    assert rc == 0 and "1 timed out" in out


def test_response_format_text_is_accepted_and_json_refused(server):
    """Harnesses send `response_format: {"type": "text"}` with `max_completion_tokens` when the model's name looks
    like a reasoning model's (lmms-eval: o1, o3, gpt-5...); text is what the server answers anyway."""
    _model_id(server)
    r = ask(server.client(), 0, response_format={"type": "text"})
    assert r.choices[0].message.content == ask(server.client(), 0).choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        ask(server.client(), 0, response_format={"type": "json_object"})
    assert e.value.response.json()["error"]["param"] == "response_format"
