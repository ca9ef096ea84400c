"""Other harnesses evaluate a served MedLVR model (issue 26 §3): the real harness package, installed from the index
into its own virtual environment (scripts/harness_venv.sh, which .ci/run builds before the tests: the harnesses
declare torchvision, which the project's environment keeps out), runs its own evaluator with its OpenAI-API back end
against the session's `medlvr serve` process, on the SLAKE sample.

lmms-eval 0.7.3: the README's `python -m lmms_eval --model openai ...` line, with its own `slake_en` task (prompt, generation settings,
scoring), the dataset pointed at the local sample (an `imagefolder` with SLAKE's columns) instead of the hub. Truth:
the answer the served model gives to the request the task defines (its image, then the question and its answer
instruction; 32 tokens, greedy), asked here with the `openai` SDK, and SLAKE's English rows read from the sample's
own test.json."""

import base64
import io
import json
import os
import re
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from medlvr.corpus.evalsets.slake import write_slake

ROOT = Path(__file__).resolve().parents[2]
LMMS_EVAL_VENV = ROOT / ".venv-harness-lmms-eval"
SLAKE_INSTRUCTION = "\nAnswer the question using a single word or phrase."  # lmms-eval's slake post_prompt


def readme_lmms_eval_command() -> list[str]:
    """The lmms-eval command of the README's "Use the model elsewhere" section, as words."""
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        if "-m lmms_eval" in block:
            return shlex.split(block.replace("\\\n", " "))
    raise AssertionError("the README prints no lmms-eval command")


def harness_python(venv: Path, name: str) -> Path:
    python = venv / "bin" / "python"
    if not (venv / ".installed").is_file():
        pytest.skip(f"{name} is not installed in {venv.name}: run scripts/harness_venv.sh {name} (.ci/run does)")
    return python


def slake_imagefolder(tmp: Path) -> tuple[Path, list[dict]]:
    """The SLAKE sample as a Hugging Face `imagefolder` (test/ with the images and a metadata.jsonl of SLAKE's
    columns, as the hub's copy has them), and the sample's rows as released."""
    raw = tmp / "slake"
    raw.mkdir()
    write_slake(raw)
    rows = json.loads((raw / "test.json").read_text(encoding="utf-8"))
    out = tmp / "slake_imagefolder" / "test"
    out.mkdir(parents=True)
    with zipfile.ZipFile(raw / "imgs.zip") as z:
        meta = []
        for r in rows:
            name = r["img_name"].replace("/", "_")
            (out / name).write_bytes(z.read(f"imgs/{r['img_name']}"))
            meta.append({"file_name": name, **{k: v for k, v in r.items() if k != "triple"}})
    (out / "metadata.jsonl").write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in meta), "utf-8")
    return out, rows


def png_data_url(path: Path) -> str:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def lmms_eval_python() -> Path:
    """Session-scoped and named before `server`: without the harness the test skips before a server starts."""
    return harness_python(LMMS_EVAL_VENV, "lmms-eval")


def test_lmms_eval_evaluates_the_served_model_on_slake(lmms_eval_python, server, tmp_path):
    python = lmms_eval_python
    images, rows = slake_imagefolder(tmp_path)
    slake_en = next(LMMS_EVAL_VENV.glob("lib/python*/site-packages/lmms_eval/tasks/slake/slake_en.yaml"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "medlvr_slake_en.yaml").write_text(
        f"include: {slake_en}\ntask: medlvr_slake_en\ndataset_path: imagefolder\n"
        f"dataset_kwargs:\n  data_dir: {images.parent}\n")
    model = server.client().models.list().data[0].id
    served_before = server.health()["served"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    printed = readme_lmms_eval_command()
    env_word, *argv = printed
    assert env_word == "OPENAI_API_KEY=none" and argv[0] == ".venv-harness-lmms-eval/bin/python"
    # as printed, but: this checkout's harness, the session server's model id and port, the local SLAKE task
    fill = {"model=medlvr,base_url=http://127.0.0.1:8000/v1": f"model={model},base_url={server.base_url}",
            "slake_en": "medlvr_slake_en", "lmms_out": str(tmp_path / "out")}
    argv = [str(python)] + [fill.get(w, w) for w in argv[1:]] + ["--include_path", str(tasks)]
    assert {"medlvr_slake_en", str(tmp_path / "out"), f"model={model},base_url={server.base_url}"} <= set(argv)
    env[env_word.split("=")[0]] = env_word.split("=")[1]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    [samples_file] = (tmp_path / "out").rglob("*_samples_medlvr_slake_en.jsonl")
    [results_file] = (tmp_path / "out").rglob("*_results.json")
    samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines()]

    english = {str(r["qid"]): r for r in rows if r["q_lang"] == "en"}
    by_qid = {s["slake_accuracy"]["id"]: s for s in samples}
    assert sorted(by_qid) == sorted(english)  # every English row once, the Chinese ones left out
    assert server.health()["served"] - served_before == len(english)  # every answer came from medlvr serve
    for qid, r in english.items():
        content = [{"type": "image_url", "image_url": {"url": png_data_url(images / r["img_name"].replace("/", "_"))}},
                   {"type": "text", "text": r["question"] + SLAKE_INSTRUCTION}]
        alone = server.client().chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                                        max_tokens=32, temperature=0)
        answer = alone.choices[0].message.content
        # the harness recorded the served model's answer: raw (`resps`, left out of the log when it equals the
        # filtered one) and as scored (`filtered_resps`: stripped)
        assert by_qid[qid].get("resps", answer) == answer and by_qid[qid]["filtered_resps"] == answer.strip(), qid
        assert by_qid[qid]["target"] == r["answer"]
    accuracy = json.loads(results_file.read_text())["results"]["medlvr_slake_en"]["slake_accuracy,none"]
    truth = [by_qid[q]["slake_accuracy"]["prediction_normalized"] == r["answer"].strip().lower()
             for q, r in english.items()]
    assert accuracy == pytest.approx(sum(truth) / len(truth))
