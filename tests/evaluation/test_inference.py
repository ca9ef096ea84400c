"""Prompts, sharding, resume and the latent_transform hook of batched evaluation inference (tiny model, CPU)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.corpus.evalsets.base import Sample, file_uri  # noqa: E402
from medlvr.evaluation.config import DecodeSettings, ModelSpec  # noqa: E402
from medlvr.evaluation.inference import (  # noqa: E402
    LoadedModel, encode_batch, merge_predictions, options_embedded, prompt_text, rank_path, read_records,
    run_predictions, shard,
)
from medlvr.training.model import set_pixel_budget  # noqa: E402
from medlvr.training.latent_decode import DecodeConfig, latent_generate  # noqa: E402
from tests.qwen_real import real_qwen_processor  # noqa: E402

SETTINGS = DecodeSettings(batch_size=2, max_new_tokens=8, max_pixels=56 * 56 * 4)


@pytest.fixture(scope="module")
def tiny_lm():
    from medlvr.training.tiny import build_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    b = build_tiny(seed=0)
    set_pixel_budget(b.processor, SETTINGS.min_pixels, SETTINGS.max_pixels)
    yield LoadedModel(ModelSpec("tiny", "tiny", k_latent=2), b.model, b.processor, b.ids)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    out = []
    for i in range(5):
        p = d / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (60 + 8 * i, 70, 3), dtype=np.uint8)).save(p)
        if i % 2:
            out.append(Sample("slake", f"s{i}", "Is there an effusion?", "yesno", "yes", images=(file_uri(p),)))
        else:
            out.append(Sample("slake", f"s{i}", "Which organ?", "mc", "B", options=(("A", "liver"), ("B", "lung")),
                              images=(file_uri(p),)))
    return out


def test_training_and_evaluation_share_the_mc_prompt():
    from medlvr.training.vlpo.data import prompt_text as vlpo_prompt_text

    s = Sample("omnimedvqa", "1", "Which organ?", "mc", "A", options=(("A", "liver"), ("B", "kidney")))
    assert prompt_text(s, "direct") == vlpo_prompt_text(s)  # VLPO trains on the prompt evaluation asks


def test_prompt_appends_options_only_when_not_embedded():
    s = Sample("pmc_vqa", "1", "Which organ?", "mc", "A", options=(("A", "liver"), ("B", "kidney")))
    assert not options_embedded(s)
    direct = prompt_text(s, "direct")
    assert "A. liver\nB. kidney" in direct and direct.endswith("Answer with the option's letter from the given "
                                                               "choices directly.")
    emb = Sample("medxpertqa_mm", "2", "Which organ?\nAnswer Choices: (A) liver (B) kidney", "mc", "A",
                 options=(("A", "liver"), ("B", "kidney")))
    assert options_embedded(emb) and "A. liver" not in prompt_text(emb, "tags")
    assert "<answer></answer>" in prompt_text(emb, "tags")
    yn = prompt_text(Sample("slake", "3", "Is it normal?", "yesno", "no"), "direct")
    assert yn == "Is it normal?\nAnswer the question with yes or no."
    with pytest.raises(ValueError):
        prompt_text(s, "nope")


@pytest.fixture(scope="module")
def real_processor():
    proc = real_qwen_processor()
    set_pixel_budget(proc, SETTINGS.min_pixels, SETTINGS.max_pixels)
    return proc


@pytest.mark.parametrize("which", ["tiny", "real_qwen"])
def test_encode_batch_token_layout(which, tiny_lm, real_processor, samples):
    """The evaluation prompt, tokenised by the tiny BPE and by the real Qwen2.5 tokenizer: left padding, the chat
    text exactly, and one <|vision_start|> + N x <|image_pad|> + <|vision_end|> block per image."""
    proc = tiny_lm.processor if which == "tiny" else real_processor
    tok = proc.tokenizer
    enc, texts = encode_batch(proc, samples[:3], "tags")
    start, pad_img, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])
    if which == "real_qwen":
        assert (start, pad_img, end) == (151652, 151655, 151653)
    for i, text in enumerate(texts):
        ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        assert enc["attention_mask"][i, -1] == 1  # left padded
        t, h, w = enc["image_grid_thw"][i].tolist()
        n = t * h * w // 4
        s = ids.index(start)
        assert ids[s:s + n + 2] == [start] + [pad_img] * n + [end] and ids.count(pad_img) == n
        assert tok.decode(ids) == text.replace("<|image_pad|>", "<|image_pad|>" * n)
        tail = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        assert ids[-len(tail):] == tail


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_disjoint_covering_and_deterministic(world):
    ids = [f"id{i}" for i in range(11)][::-1]
    parts = [shard(ids, r, world) for r in range(world)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert len(set(sum(parts, []))) == len(ids)
    assert parts == [shard(list(reversed(ids)), r, world) for r in range(world)]  # input order irrelevant
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        shard(ids, world, world)


def test_resume_skips_finished_ids(tiny_lm, samples, tmp_path):
    out = tmp_path / "slake.jsonl"
    # a finished record for s1 and a torn last line (a killed run) already in the file
    out.write_text(json.dumps({"benchmark": "slake", "sample_id": "s1", "output": "KEEP"}) + "\n" + '{"benchm')
    st = run_predictions(tiny_lm, samples, out, settings=SETTINGS)
    assert (st.n_done, st.n_skipped) == (4, 1)
    recs = read_records(out)
    assert sorted(r["sample_id"] for r in recs) == ["s0", "s1", "s2", "s3", "s4"]
    assert next(r for r in recs if r["sample_id"] == "s1")["output"] == "KEEP"
    r0 = next(r for r in recs if r["sample_id"] == "s0")
    for key in ("benchmark", "sample_id", "output", "n_tokens", "latency_s", "model", "k_latent", "variant",
                "finish_reason", "n_latent"):
        assert key in r0
    assert r0["k_latent"] == 2 and r0["n_latent"] == 2 and r0["output"].startswith("<Medlvr_Start>")
    assert r0["n_tokens"] <= SETTINGS.max_new_tokens
    st2 = run_predictions(tiny_lm, samples, out, settings=SETTINGS)  # rerun: nothing left to do
    assert (st2.n_done, st2.n_skipped) == (0, 5)
    assert len(read_records(out)) == 5


def test_data_parallel_ranks_write_own_files_and_merge(tiny_lm, samples, tmp_path):
    out = tmp_path / "slake.jsonl"
    for rank in range(2):  # world_size 2 simulated in one process
        run_predictions(tiny_lm, samples, out, settings=SETTINGS, rank=rank, world_size=2, k_latent=0)
    parts = [rank_path(out, r, 2) for r in range(2)]
    got = [sorted(r["sample_id"] for r in read_records(p)) for p in parts]
    assert got == [["s0", "s2", "s4"], ["s1", "s3"]]
    assert {r["rank"] for r in read_records(parts[1])} == {1}
    merged = merge_predictions(out, 2, remove_parts=True)
    assert [r["sample_id"] for r in merged] == ["s0", "s1", "s2", "s3", "s4"]
    assert not any(p.exists() for p in parts)
    assert all(r["k_latent"] == 0 and r["n_latent"] == 0 and "<Medlvr" not in r["output"] for r in merged)
    # a later sharded rerun finds everything in the merged file
    st = run_predictions(tiny_lm, samples, out, settings=SETTINGS, rank=0, world_size=2, k_latent=0)
    assert st.n_done == 0 and st.n_skipped == 3


def test_latent_transform_hook(tiny_lm, samples):
    enc, _ = encode_batch(tiny_lm.processor, samples[:3], "tags")
    cfg = DecodeConfig(k_latent=3, max_new_tokens=6)
    ref = latent_generate(tiny_lm.model, enc, tiny_lm.ids, cfg)
    same = latent_generate(tiny_lm.model, enc, tiny_lm.ids, cfg, latent_transform=None)
    assert torch.equal(ref.sequences, same.sequences) and torch.equal(ref.z, same.z)
    calls = []

    def zero(z, rows, slots):
        calls.append((rows.tolist(), slots.tolist()))
        return torch.zeros_like(z)

    out = latent_generate(tiny_lm.model, enc, tiny_lm.ids, cfg, latent_transform=zero)
    assert torch.count_nonzero(out.z) == 0
    assert torch.allclose(out.mu[:, 0], ref.mu[:, 0])  # the first latent's mean comes before any transform
    assert calls == [([0, 1, 2], [k] * 3) for k in range(3)]
