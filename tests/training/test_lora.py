"""LoRA via peft (issue 18 §2), tiny model on CPU: only adapter parameters and the control-token rows change (every
trainable parameter does), the merged model gives the same outputs as base + adapter, and resume is exact, in
ROI-SFT and VLPO."""

import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from medlvr.training.engine import Engine, EngineConfig  # noqa: E402
from medlvr.training.lora import LoraConfig, merged_model, target_regex  # noqa: E402
from medlvr.training.model import load_checkpoint, set_pixel_budget  # noqa: E402
from medlvr.training.sft.collate import collate  # noqa: E402
from medlvr.training.sft.data import ShardStream, shard_files  # noqa: E402
from medlvr.training.sft.forward import sft_forward  # noqa: E402
from medlvr.training.sft.losses import answer_nll_sum, roi_loss_sum, sft_loss  # noqa: E402
from medlvr.training.sft.recipe import build_model, train  # noqa: E402
from tests.training.helpers import Killed, kill_at, tiny_config  # noqa: E402

BUDGET = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16)
K = 2
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_sample_corpus(tmp_path_factory.getbasetemp() / "lora_corpus")


@pytest.fixture(scope="module")
def batch(tiny, corpus):
    proc = copy.deepcopy(tiny.processor)
    set_pixel_budget(proc, **BUDGET)
    rows = ShardStream(shard_files(corpus, "train"), seed=1).next_rows(3)
    return collate(rows, proc, tiny.ids, K, **BUDGET), proc


def _loss(model, b, ids, proc):
    f = sft_forward(model, b, ids, proc.image_processor, mode="self_fed", grad="detach")
    return sft_loss(answer_nll_sum(f.token_logprobs, b.label_mask), b.n_label, roi_loss_sum(f.h, f.targets, b.roi_mask),
                    b.n_roi, 0.1)


def _lora_engine(tiny):
    model = copy.deepcopy(tiny.model)
    cfg = EngineConfig(device="cpu", lr=1e-2, warmup_ratio=0.0, schedule="constant", weight_decay=0.0,
                       lora=LoraConfig(r=4, alpha=8.0))
    ids = tiny.ids
    return Engine(model, cfg, total_steps=3, token_ids=(ids.start, ids.latent, ids.end))


def test_target_regex_excludes_the_vision_tower(tiny):
    import re

    rx = re.compile(target_regex(TARGETS))
    names = [n for n, _ in tiny.model.named_modules()]
    hit = [n for n in names if rx.match(n)]
    assert hit and all(n.startswith("model.language_model.layers.") for n in hit)
    assert any("model.visual" in n and n.endswith("gate_proj") for n in names)  # same names in the vision MLP
    assert len(hit) == 7 * tiny.model.config.text_config.num_hidden_layers


def test_only_adapters_and_control_rows_change_and_merge_is_exact(tiny, batch):
    b, proc = batch
    ids = tiny.ids
    eng = _lora_engine(tiny)
    before = {n: p.detach().clone() for n, p in eng.peft.named_parameters()}
    trainable = {n for n, p in eng.peft.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)  # 7B-like: untied
    for _ in range(2):  # step 1 moves lora_B off zero; only then does lora_A get a gradient
        eng.backward(_loss(eng.model, b, ids, proc))
        assert eng.step().stepped
    for n, p in eng.peft.named_parameters():
        assert torch.equal(p.detach(), before[n]) == (n not in trainable), n  # every trainable one, nothing else

    eng.model.eval()
    merged = merged_model(eng.peft)
    assert not any("lora_" in n or "trainable_tokens" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        a = sft_forward(eng.model, b, ids, proc.image_processor, mode="self_fed", grad="detach")
        m = sft_forward(merged, b, ids, proc.image_processor, mode="self_fed", grad="detach")
    torch.testing.assert_close(m.token_logprobs, a.token_logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.h, a.h, atol=1e-5, rtol=1e-5)

    # effective weights: the embedding / lm_head changed in the control rows only. <Medlvr_Latent>'s rows are
    # trainable but get no gradient: its input row is replaced by z, its output is banned from the policy.
    base = tiny.model
    for get in ("get_input_embeddings", "get_output_embeddings"):
        rows = [ids.start, ids.end]
        w0, w1 = getattr(base, get)().weight, getattr(merged, get)().weight
        diff = (w0 != w1).any(-1).nonzero().squeeze(1).tolist()
        assert diff == rows, (get, diff)


def test_sft_recipe_with_lora_saves_adapter_and_merged_model_and_resumes_exactly(corpus, tmp_path):
    over = ("engine.lora.r=4", "engine.lora.alpha=8", "engine.lr=1e-2", "run.max_steps=4", "run.save_every=2")
    a = tmp_path / "a"
    res = train(tiny_config(corpus, a, *over))
    ref = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    ck = Path(res["checkpoint"])
    cfg = json.loads((ck / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA" and (ck / "adapter" / "adapter_model.safetensors").is_file()
    model, _, ids = load_checkpoint(ck / "model")  # a plain Qwen2.5-VL checkpoint: adapters merged in
    assert not any("lora_" in n for n, _ in model.named_parameters())
    base = build_model(tiny_config(corpus, a).model)[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])}
    assert changed and all(n.endswith(TARGETS_WEIGHT) or "embed_tokens" in n or "lm_head" in n for n in changed)
    assert any("visual" not in n and "q_proj" in n for n in changed) and not any("visual" in n for n in changed)

    b = tmp_path / "b"

    with pytest.raises(Killed):
        train(tiny_config(corpus, b, *over), on_step=kill_at(2))
    train(tiny_config(corpus, b, *over, "run.resume=auto"))
    resumed = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert resumed[2:] == pytest.approx(ref[2:], rel=1e-6, abs=1e-7)


TARGETS_WEIGHT = tuple(f"{t}.weight" for t in TARGETS)
