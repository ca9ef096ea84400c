"""`medlvr evaluate` with a model behind an OpenAI-compatible endpoint (a fake server on 127.0.0.1): same prompts,
parsing and tables as local models, failed requests asked again on the next run and only those; and the
machine-readable results (results.json, one CSV per table, per-sample records) agree with the HTML report."""

import csv
import os
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from medlvr.evaluation import cli as evaluation_cli
from medlvr.evaluation.config import ConfigError, load_eval_config
from medlvr.evaluation.results import cell_value
from tests.fake_chat_server import chat_reply, fake_chat_server

SECRET = "sk-endpoint-secret-42"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FAKE_ENDPOINT_KEY", SECRET)


def _config(url: str, **endpoint) -> dict:
    return {
        "title": "endpoint baseline", "out_dir": "out", "data_root": "bench", "sample_data": True, "limit": 4,
        "benchmarks": {"slake": {}, "mmmu_hm": {}},
        "models": [{"name": "served", "prompt_style": "direct",
                    "endpoint": {"base_url": url, "model": "qwen2.5-vl-7b", "api_key_env": "FAKE_ENDPOINT_KEY",
                                 "max_concurrency": 2, "timeout_s": 5.0, "max_retries": 0, **endpoint}}],
        "decode": {"max_new_tokens": 16, "max_pixels": 12544},
        "table4": {"models": ["served"]},
    }


def _answer(body: dict) -> str:
    """A deterministic 'model': yes to yes/no questions, option A to multiple choice, 'lung' otherwise."""
    text = body["messages"][0]["content"][-1]["text"]
    if "yes or no" in text.lower():
        return "Yes."
    if "\nA." in text or "letter" in text.lower():
        return "A"
    return "lung"


def _run(tmp_path, cfg, capsys) -> tuple[int, str, str]:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc = evaluation_cli.main(["evaluate", "--config", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


class _Tables(HTMLParser):
    """(caption text, csv href, rows of cell texts) of every <table> in the report page."""

    def __init__(self):
        super().__init__()
        self.tables, self._in, self._cell = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": "", "csv": None, "rows": []})
        elif tag == "caption":
            self._in = "caption"
        elif tag == "a" and self._in == "caption":
            self.tables[-1]["csv"] = dict(attrs)["href"]
            self._in = "link"
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("caption", "a") and self._in:
            self._in = None if tag == "caption" else "caption-done"
        elif tag in ("td", "th"):
            self.tables[-1]["rows"][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._in == "caption":
            self.tables[-1]["caption"] += data
        elif self._cell is not None:
            self._cell += data


def test_endpoint_model_is_scored_like_a_local_one_and_resumes(tmp_path, capsys):
    flaky = {"fail_once": True}

    def serve(srv, n, body):
        text = body["messages"][0]["content"][-1]["text"]
        if flaky["fail_once"] and "yes or no" in text.lower():
            return 500, {"error": "overloaded"}, {}
        return 200, chat_reply(_answer(body), completion_tokens=2), {}

    with fake_chat_server(serve) as srv:
        rc, out, err = _run(tmp_path, _config(srv.base_url), capsys)
        first_calls = srv.calls
        bodies = list(srv.bodies)
        flaky["fail_once"] = False
        preds = tmp_path / "out/predictions/served/k0/main"
        answered = {p.name: len(p.read_text().splitlines()) for p in preds.glob("*.jsonl")}
        rc2, out2, err2 = _run(tmp_path, _config(srv.base_url), capsys)
        second_calls = srv.calls - first_calls
        rc3, _, _ = _run(tmp_path, _config(srv.base_url), capsys)
        third_calls = srv.calls - first_calls - second_calls

    # run 1: the yes/no questions failed (no retries configured): one error line per job, exit 1, nothing written
    n_failed = 8 - sum(answered.values())
    assert rc == 1 and n_failed > 0
    errors = [line for line in err.splitlines() if line.startswith("medlvr: error:")]
    assert errors and all("HTTP 500" in e and "rerun the same command" in e for e in errors)
    assert first_calls == 8
    # run 2 asks only the failed ones, run 3 nothing
    assert rc2 == 0 and second_calls == n_failed and third_calls == 0 and rc3 == 0
    assert SECRET not in out + err + out2 + err2
    # the request: images as data URLs, the local prompt text, max_tokens from decode
    img_body = next(b for b in bodies if b["messages"][0]["content"][0]["type"] == "image_url")
    assert img_body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert img_body["max_tokens"] == 16 and img_body["model"] == "qwen2.5-vl-7b"
    # records like a local model's; tables list the endpoint
    rec = json.loads((preds / "slake.jsonl").read_text().splitlines()[0])
    assert rec["model"] == "served" and rec["k_latent"] == 0 and rec["n_tokens"] == 2 and rec["attempts"] == 1
    results = json.loads((tmp_path / "out/results.json").read_text())
    [ident] = results["models"]
    assert ident == {"name": "served", "variant": "served", "k_latent": 0, "prompt_style": "direct",
                     "kind": "endpoint", "base_url": srv.base_url, "model": "qwen2.5-vl-7b"}
    acc = next(t for t in results["tables"] if t["caption"] == "Accuracy per benchmark [protocol: medlvr]")
    assert {r[1] for r in acc["rows"]} == {"slake", "mmmu_hm"} and all(r[2] == 4 for r in acc["rows"])
    assert "qwen2.5-vl-7b @ " + srv.base_url in (tmp_path / "out/report.md").read_text()


def test_results_json_csv_and_samples_agree_with_the_html_report(tmp_path, capsys):
    with fake_chat_server(lambda srv, n, body: (200, chat_reply(_answer(body)), {})) as srv:
        rc, out, _ = _run(tmp_path, _config(srv.base_url), capsys)
    assert rc == 0 and "results: " in out
    root = tmp_path / "out"
    parser = _Tables()
    parser.feed((root / "report.html").read_text())
    results = json.loads((root / "results.json").read_text())
    assert len(parser.tables) == len(results["tables"]) >= 4
    for html_t, json_t in zip(parser.tables, results["tables"]):
        assert html_t["caption"].strip() == json_t["caption"] and html_t["csv"] == json_t["csv"]
        rows = list(csv.reader((root / json_t["csv"]).open()))
        assert rows == html_t["rows"]  # the CSV holds exactly the cells the page shows, header first
        assert rows[0] == json_t["columns"]
        assert [[cell_value(c) for c in r] for r in rows[1:]] == json_t["rows"]
        assert f"({json_t['csv']})" in (root / "report.md").read_text()
    assert results["config"]["models"][0]["endpoint"]["api_key_env"] == "FAKE_ENDPOINT_KEY"
    assert SECRET not in (root / "results.json").read_text()
    for link in ("results.json", "tables/", "samples/"):
        assert f"href='{link}'" in (root / "report.html").read_text()

    # per-sample records: one per scored sample, and they add up to the accuracy table
    acc = next(t for t in results["tables"] if t["caption"] == "Accuracy per benchmark [protocol: medlvr]")
    for _, bench, n, accuracy, parse_fail, *_ in acc["rows"]:
        path = root / "samples/served/k0/main" / f"{bench}.jsonl"
        assert f"samples/served/k0/main/{bench}.jsonl" in results["samples"]
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(recs) == n
        assert round(100 * sum(r["correct"] for r in recs) / n, 1) == accuracy
        assert round(100 * sum(r["parse_failure"] is not None for r in recs) / n, 1) == parse_fail
        for r in recs:
            assert set(r) >= {"question_id", "question", "options", "gold", "raw_output", "parsed", "correct",
                              "parse_failure"}
            assert r["question"] and r["raw_output"] == _answer_for(r)
            assert (r["parse_failure"] is None) == (r["parsed"] is not None)


def _answer_for(rec: dict) -> str:
    return {"yesno": "Yes.", "mc": "A"}.get(rec["kind"], "lung")


def test_parse_failure_reasons():
    from medlvr.evaluation.results import parse_failure

    assert parse_failure({"parsed": "A", "output": "A"}) is None
    assert parse_failure({"parsed": None, "output": "<Medlvr_Start><Medlvr_End>", "kind": "mc"}).startswith("empty")
    assert parse_failure({"parsed": None, "output": "Let me think", "kind": "mc",
                          "finish_reason": "length"}).startswith("truncated")
    assert "no option letter" in parse_failure({"parsed": None, "output": "no idea", "kind": "mc"})
    assert "no yes/no" in parse_failure({"parsed": None, "output": "perhaps", "kind": "yesno"})


@pytest.mark.parametrize("model,msg", [
    ({"name": "x", "path": "tiny", "endpoint": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}, "not both"),
    ({"name": "x", "k_latent": 4, "endpoint": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}, "k_latent"),
    ({"name": "x", "endpoint": {"base_url": "http://127.0.0.1:1/v1"}}, "model"),
    ({"name": "x", "endpoint": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key": "sk-1"}},
     "unknown config key models[0].endpoint.api_key"),
])
def test_endpoint_config_errors(tmp_path, model, msg):
    cfg = {"data_root": "bench", "benchmarks": {"slake": {}}, "models": [model]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        load_eval_config(tmp_path / "c.yaml")


def test_endpoint_models_cannot_feed_the_weight_based_figures(tmp_path):
    ep = {"name": "served", "endpoint": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}
    for section in ({"fig3": {"models": ["served"]}}, {"ablation": {"model": "served"}},
                    {"fig5": {"model": "served", "k_values": [2]}}):
        cfg = {"data_root": "bench", "benchmarks": {"slake": {}}, "models": [ep], **section}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match="is an endpoint model"):
            load_eval_config(tmp_path / "c.yaml")


def test_configs_eval_endpoint_yaml_loads():
    cfg = load_eval_config(Path(__file__).parents[2] / "configs" / "eval_endpoint.yaml")
    assert any(m.endpoint is not None for m in cfg.models)


def test_readme_endpoint_line(tmp_path):
    """The README's endpoint baseline line, as printed, through the installed console script and piped: the repo's
    configs/ copied with base_url pointing at a fake server (the one change: where the server listens)."""
    import re
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).parents[2]
    [line] = [m for m in re.findall(r"^medlvr evaluate [^\n#]*", (repo / "README.md").read_text(), re.M)
              if "eval_endpoint.yaml" in m]
    with fake_chat_server(lambda srv, n, body: (200, chat_reply(_answer(body)), {})) as srv:
        shutil.copytree(repo / "configs", tmp_path / "configs")
        cfg = tmp_path / "configs" / "eval_endpoint.yaml"
        cfg.write_text(cfg.read_text().replace("http://127.0.0.1:8000/v1", srv.base_url))
        argv = [str(Path(sys.executable).parent / "medlvr"), *line.split()[1:]]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OPENAI_API_KEY": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert "report.html" in proc.stdout and "results.json" in proc.stdout
    assert srv.calls > 0 and srv.headers_seen[0]["authorization"] == f"Bearer {SECRET}"
    # in a pipe: a line per benchmark as it completes, then one summary line per model
    *jobs, summary = proc.stderr.splitlines()
    assert "samples in" in summary and jobs and all(re.match(r"qwen25vl_7b: inference: \S+ \S+: \d+ answered", j)
                                                    for j in jobs), proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_dagster_predictions_partition_fails_on_endpoint_errors_and_resumes(tmp_path):
    import dagster as dg

    from medlvr.pipelines.evaluation.assets import EvaluationSettings, evaluation_predictions

    state = {"down": True}
    with fake_chat_server(lambda srv, n, body: (503, {"error": "down"}, {}) if state["down"] else
                          (200, chat_reply(_answer(body)), {})) as srv:
        path = tmp_path / "eval.yaml"
        path.write_text(yaml.safe_dump({**_config(srv.base_url), "table4": None}, sort_keys=False))
        res = {"evaluation": EvaluationSettings(config_path=str(path))}
        r = dg.materialize([evaluation_predictions], partition_key="slake", resources=res, raise_on_error=False)
        assert not r.success and srv.calls == 4
        [failure] = [e for e in r.all_events if e.is_step_failure]
        assert "4 endpoint requests failed" in failure.step_failure_data.error.message
        state["down"] = False
        r = dg.materialize([evaluation_predictions], partition_key="slake", resources=res)
        assert r.success and srv.calls == 8
        assert r.asset_materializations_for_node("evaluation_predictions")[0].metadata["records"].value == 4


def test_unreadable_image_is_one_line_naming_file_and_record(tmp_path):
    """An endpoint request whose image is not an image fails with the same line as local inference: benchmark,
    file relative to the benchmark root, record."""
    from medlvr.corpus.evalsets.base import BenchmarkError, Sample, file_uri
    from medlvr.evaluation.endpoint_inference import chat_messages

    root = tmp_path / "slake"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "x.png").write_bytes(b"not an image at all")
    sample = Sample("slake", "q17", "Where is the lesion?", "open", "liver", images=(file_uri(root / "imgs" / "x.png"),))
    with pytest.raises(BenchmarkError) as e:
        chat_messages(sample, "direct", 12544, root)
    msg = str(e.value)
    assert "\n" not in msg and "record q17" in msg and "imgs/x.png" in msg and str(tmp_path) not in msg
