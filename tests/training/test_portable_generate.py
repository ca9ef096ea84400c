"""The latent loop travels with the model (issue 26 §1): every saved folder carries `custom_generate/generate.py`,
built from the modules that decode for `medlvr ask` / `medlvr evaluate`, and plain transformers runs it.

The decisive test runs a Python in which `medlvr` is NOT importable (`python -S`, site-packages on PYTHONPATH
without the editable install's finder, a temporary working directory): it loads the folder with
`AutoModelForImageTextToText(..., trust_remote_code=True)`, builds the batch with `AutoTokenizer` +
`AutoImageProcessor` only, and its answers and latent states equal MedLVR's decode (`latent_generate`, what `ask`
and the evaluation call) and the `medlvr ask` console script's printed answer, batched and single, greedy.
"""

import ast
import json
import os
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medlvr.evaluation.ask import read_image
from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.model import eos_token_ids, load_checkpoint, save_checkpoint
from medlvr.training.portable_generate import bundle_source
from medlvr.training.tiny import build_tiny

MEDLVR = Path(sys.executable).parent / "medlvr"
K = 3
MAX_NEW = 12  # answer tokens after the latent segment, as `medlvr ask`'s budget counts them
SIZES = [(64, 80), (96, 56), (70, 70)]
QUESTION = "Which organ is abnormal?"

# What a user with only torch + transformers (+ PIL) writes: no AutoProcessor (it needs torchvision), so the
# image tokens are expanded by hand exactly as Qwen2_5_VLProcessor does (grid t*h*w / merge^2 per image).
PLAIN_SCRIPT = r'''
import json, sys
try:
    import medlvr  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("medlvr is importable: the test would prove nothing")
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

folder, question, max_new, out_path, mode, *images = sys.argv[1:]
tok = AutoTokenizer.from_pretrained(folder)
tok.padding_side = "left"
ip = AutoImageProcessor.from_pretrained(folder)


def batch(paths):
    pics = [Image.open(p).convert("RGB") for p in paths]
    px = ip(images=pics, return_tensors="pt")
    texts = []
    for grid in px["image_grid_thw"]:
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        texts.append(text.replace("<|image_pad|>", "<|image_pad|>" * (int(grid.prod()) // 4)))
    enc = tok(texts, padding=True, return_tensors="pt")
    return {**enc, "pixel_values": px["pixel_values"], "image_grid_thw": px["image_grid_thw"]}


if mode == "trust_remote_code":  # generate replaced at load time
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    run = lambda b: model.generate(**b, max_new_tokens=int(max_new), return_dict_in_generate=True)
else:  # a model loaded plainly, the loop named at the call
    model = AutoModelForImageTextToText.from_pretrained(folder)
    run = lambda b: model.generate(**b, max_new_tokens=int(max_new), return_dict_in_generate=True,
                                   custom_generate=folder, trust_remote_code=True)
end = tok.convert_tokens_to_ids("<Medlvr_End>")
result = {}
for name, paths in (("batched", images), *((f"single{i}", [p]) for i, p in enumerate(images))):
    b = batch(paths)
    out = run(b)
    gen = out.sequences[:, b["input_ids"].shape[1]:]
    answers = []
    for row in gen.tolist():
        after = row[row.index(end) + 1:] if end in row else row
        answers.append(tok.decode(after, skip_special_tokens=True).strip())
    result[name] = {"input_ids": b["input_ids"].tolist(), "generated": gen.tolist(), "answers": answers,
                    "latent_states": out.latent_states.tolist(), "n_latent": out.n_latent.tolist()}
json.dump(result, open(out_path, "w"))
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    b = build_tiny(seed=3)
    return save_checkpoint(b.model, b.processor, tmp_path_factory.mktemp("portable") / "model", k_latent=K)


@pytest.fixture(scope="module")
def text_blind_folder(tmp_path_factory):
    """A checkpoint trained with `latent.text_blind` (recorded in its medlvr_latent.json): the same weights as
    `folder`, so only the mask can make its answers differ."""
    from medlvr.training.bottleneck import set_text_blind

    b = build_tiny(seed=3)
    set_text_blind(b.model, True)
    path = save_checkpoint(b.model, b.processor, tmp_path_factory.mktemp("portable_tb") / "model", k_latent=K)
    assert json.loads((Path(path) / "medlvr_latent.json").read_text())["text_blind"] is True  # independent read
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """PNGs as `medlvr ask` reads them (its normalisation leaves these unchanged: checked), so the plain script,
    `ask` and the in-process reference see the same pixels."""
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, (h, w) in enumerate(SIZES):
        arr = np.random.default_rng(10 + i).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        p = d / f"img{i}.png"
        Image.fromarray(arr).save(p)
        assert np.array_equal(read_image(p).pixels, arr)
        paths.append(p)
    return paths


def plain_python_env(tmp: Path) -> tuple[list[str], dict]:
    """A Python where only site-packages is on the path: -S skips the .pth files, so the editable install's finder
    (the only way `medlvr` is importable) is not there; the working directory is a temporary one."""
    site = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEDLVR"))}
    env.update(PYTHONPATH=site, HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    return [sys.executable, "-S", "-c", PLAIN_SCRIPT], env


def run_plain(folder, images, tmp_path, mode, max_new=MAX_NEW):
    cmd, env = plain_python_env(tmp_path)
    out = tmp_path / f"{mode}.json"
    p = subprocess.run([*cmd, str(folder), QUESTION, str(max_new), str(out), mode, *map(str, images)], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def reference(folder, images):
    """MedLVR's own decode of the same prompts: the processor, `latent_generate`, `ask`'s budget and stop ids."""
    torch.set_num_threads(1)
    model, processor, ids = load_checkpoint(folder)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    cfg = DecodeConfig(k_latent=K, max_new_tokens=MAX_NEW + K + 2, force_start=True, eos_token_ids=eos_token_ids(model))
    result = {}
    for name, paths in (("batched", images), *((f"single{i}", [p]) for i, p in enumerate(images))):
        pics = [Image.open(p).convert("RGB") for p in paths]
        enc = processor(text=[text] * len(pics), images=pics, padding=True, return_tensors="pt")
        out = latent_generate(model, enc, ids, cfg)
        result[name] = (enc["input_ids"].tolist(), out)
    return result


def test_every_saved_folder_carries_the_bundled_loop_without_a_medlvr_import(folder):
    path = folder / "custom_generate" / "generate.py"
    text = path.read_text()
    assert text == bundle_source()  # one source of truth: the file is the decode modules, bundled
    imported = {(n.module or "") if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    assert not [m for m in imported if m.split(".")[0] == "medlvr"], imported
    assert {m.split(".")[0] for m in imported} <= {"__future__", "torch", "transformers", "collections", "dataclasses",
                                                   "time", "random", "functools", "json", "os"}
    assert "def latent_generate(" in text and "def generate(model" in text


@pytest.mark.parametrize("mode", ["trust_remote_code", "custom_generate"])
def test_plain_transformers_decodes_as_medlvr_batched_and_single(folder, images, tmp_path, mode):
    got = run_plain(folder, images, tmp_path, mode)
    ref = reference(folder, images)
    for name, (input_ids, out) in ref.items():
        g = got[name]
        assert g["input_ids"] == input_ids, name  # the plain batch is the processor's batch
        assert g["generated"] == out.sequences.tolist(), name
        assert g["n_latent"] == out.n_latent.tolist() == [K] * len(input_ids)
        assert torch.equal(torch.tensor(g["latent_states"]), out.z.float()), name
    # the batch decodes each prompt as it decodes alone (left padding, per-row positions)
    for i in range(len(images)):
        assert got[f"single{i}"]["answers"][0] == got["batched"]["answers"][i]
        assert torch.allclose(torch.tensor(got[f"single{i}"]["latent_states"][0]),
                              torch.tensor(got["batched"]["latent_states"][i]), atol=1e-4)


def test_plain_transformers_answer_is_the_one_medlvr_ask_prints(folder, images, tmp_path):
    got = run_plain(folder, images[:1], tmp_path, "trust_remote_code", max_new=64)  # `medlvr ask`'s budget
    p = subprocess.run([str(MEDLVR), "ask", "--model", str(folder), "--image", str(images[0]), "--question", QUESTION,
                        "--out", str(tmp_path / "ask")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"latent segment: <Medlvr_Start> {K} latent states <Medlvr_End>" in p.stdout
    answer = p.stdout.split("\nanswer: ", 1)[1].rsplit("\noverlay: ", 1)[0]
    assert answer == got["single0"]["answers"][0]


def test_a_medlvr_loaded_model_warns_once_that_stock_generate_skips_the_latent_loop(folder, images):
    model, processor, _ = load_checkpoint(folder)
    enc = processor(text=[processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}], tokenize=False,
        add_generation_prompt=True)], images=[Image.open(images[0]).convert("RGB")], return_tensors="pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(**enc, max_new_tokens=2, do_sample=False)
        model.generate(**enc, max_new_tokens=2, do_sample=False)
    mine = [w for w in caught if "latent loop is not running" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    assert "custom_generate" in str(mine[0].message) and "trust_remote_code=True" in str(mine[0].message)


def test_plain_transformers_decodes_a_text_blind_model_with_its_mask(folder, text_blind_folder, images, tmp_path):
    """The portable loop reads `text_blind` from the folder and bars the prompt text after the image from it, as
    MedLVR's load does: its latent states equal MedLVR's decode of the text-blind checkpoint, and differ from the
    same weights decoded without the mask (so the flag is not ignored on either side)."""
    got = run_plain(text_blind_folder, images, tmp_path, "trust_remote_code")
    ref = reference(text_blind_folder, images)
    plain = reference(folder, images)
    for name, (input_ids, out) in ref.items():
        assert got[name]["generated"] == out.sequences.tolist(), name
        assert torch.equal(torch.tensor(got[name]["latent_states"]), out.z.float()), name
    assert not torch.equal(ref["batched"][1].z, plain["batched"][1].z)
